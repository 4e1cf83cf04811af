"""Intervention specs: which SAE latents to edit, how, and where.

An :class:`InterventionSpec` is a list of :class:`Edit` s applied together to the SAE code
``z`` of every token at the model's hook point (see :mod:`medseglens_core.interventions.apply`).
The models are plain pydantic v2 so the service embeds them in its OpenAPI document unchanged.

Ops on the code value ``z[t, latent]`` of each token ``t`` in scope:

========  ==========================================================  ===================
op        new value                                                   needs
========  ==========================================================  ===================
ablate    ``0``                                                       --
clamp     ``value``                                                   ``value``
scale     ``z * value``                                               ``value``
add       ``z + value``                                               ``value``
patch     the reference cohort's mean activation when active          ``reference_cohort``
========  ==========================================================  ===================

Scopes (which tokens an edit touches; all masks are on the case grid, RAS ``[x, y, z]``, and
mapped per axial slice onto the hook grid, a token being in scope when any voxel of its cell is):

* ``all``: every token of every slice.
* ``active``: tokens where the edited latent is active (``z > 0``) before the edit.
* ``predicted_region``: the unedited model's predicted ``region`` (WT, TC, ET, NCR or SNFH),
  dilated by ``dilation`` voxels in 3-D (default 0).
* ``mask``: a boolean ``(X, Y, Z)`` array the caller supplies at apply time (not in JSON).
* ``box``: ``[x0, y0, z0, x1, y1, z1]`` voxel indices on the case grid, ends exclusive.
* ``slices``: ``[z0, z1]`` axial slice indices on the case grid, end exclusive.

An optional :class:`Gate` makes the whole spec conditional on the volume: its score is a
weighted sum of the log firing rates of some latents over the volume's brain tokens (hook cells
holding any brain voxel of the prepared case's brain mask),

    score = sum_j weights[j] * log(rate_j + GATE_EPS),   rate_j = #{t : z[t, j] > 0} / #tokens

and the edits apply only when ``score >= threshold``; otherwise the spec is the identity (the
unedited prediction, bit for bit). The recovery benchmark's blind protocols fit one so that a
population-specific repair leaves scans of the training population untouched: the firing rates
of population-specific latents tell the populations apart without any label.

``protect`` (regions, e.g. ``["TC"]``): voxels the unedited model assigns to one of these regions
keep their unedited label, whatever the edit does to the logits there. An oedema repair with
``protect: ["TC"]`` can grow oedema around the core but cannot rewrite the core itself (the
recovery benchmark's protocols use it, and its baselines get the same protection). The edited logits and
latent summaries are unchanged; only the label map is.
"""

from __future__ import annotations

from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

Op = Literal["ablate", "clamp", "scale", "add", "patch"]
Scope = Literal["all", "active", "predicted_region", "mask", "box", "slices"]
RegionName = Literal["WT", "TC", "ET", "NCR", "SNFH"]

#: Floor added to firing rates before the log in a :class:`Gate` score.
GATE_EPS = 1e-4

#: Ops whose new value is computed from ``value``.
VALUE_OPS: frozenset[str] = frozenset({"clamp", "scale", "add"})


class Edit(BaseModel):
    """One latent edit: ``op`` applied to latent ``latent`` on the tokens selected by ``scope``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    latent: int = Field(ge=0, description="SAE latent index, 0 <= latent < d_sae.")
    op: Op = Field(description="ablate | clamp | scale | add | patch (see module docs).")
    value: float | None = Field(
        default=None, description="Required for clamp (new value), scale (factor) and add (offset)."
    )
    reference_cohort: str | None = Field(
        default=None, description="Required for patch: cohort whose mean active activation is used."
    )
    scope: Scope = Field(default="all", description="Which tokens the edit touches.")
    region: RegionName | None = Field(
        default=None, description="Required for scope=predicted_region: the predicted region."
    )
    dilation: int = Field(default=0, ge=0, le=64, description="Voxels to dilate the predicted region.")
    box: list[int] | None = Field(
        default=None, description="scope=box: [x0, y0, z0, x1, y1, z1], voxels, ends exclusive."
    )
    slices: list[int] | None = Field(
        default=None, description="scope=slices: [z0, z1] axial slices of the case grid, end exclusive."
    )

    @model_validator(mode="after")
    def _check_combination(self) -> Self:
        problems: list[str] = []
        if self.op in VALUE_OPS and self.value is None:
            problems.append(f"op '{self.op}' needs a numeric 'value'")
        if self.op not in VALUE_OPS and self.value is not None:
            problems.append(f"op '{self.op}' takes no 'value'; remove it")
        if self.value is not None and self.value != self.value:
            problems.append("'value' must be a number, not NaN")
        if self.op == "patch" and not self.reference_cohort:
            problems.append("op 'patch' needs 'reference_cohort' (e.g. 'adult')")
        if self.scope == "predicted_region" and self.region is None:
            problems.append("scope 'predicted_region' needs 'region' (WT, TC, ET, NCR or SNFH)")
        if self.scope == "box":
            if self.box is None or len(self.box) != 6:
                problems.append("scope 'box' needs 'box' = [x0, y0, z0, x1, y1, z1]")
            elif any(v < 0 for v in self.box) or any(self.box[i] >= self.box[i + 3] for i in range(3)):
                problems.append("'box' needs 0 <= start < end on every axis")
        if self.scope == "slices":
            if self.slices is None or len(self.slices) != 2:
                problems.append("scope 'slices' needs 'slices' = [z0, z1]")
            elif not 0 <= self.slices[0] < self.slices[1]:
                problems.append("'slices' needs 0 <= z0 < z1")
        if problems:
            raise ValueError(f"edit of latent {self.latent}: " + "; ".join(problems))
        return self


class Gate(BaseModel):
    """Apply the spec only to volumes whose latent firing rates score ``>= threshold``.

    ``score = sum_j weights[j] * log(rate_j + GATE_EPS)`` over ``latents`` (see module docs).
    The latents may belong to an SAE at another hook of the same model (``hook``): a population
    can be told apart better at one depth than the one where steering works.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    latents: list[int] = Field(min_length=1, max_length=256, description="SAE latent indices.")
    hook: str | None = Field(
        default=None,
        description="Hook whose SAE the gate reads (None: the edited SAE's hook). Another hook "
        "needs that hook's SAE at apply time (`gate_sae`).",
    )
    weights: list[float] = Field(min_length=1, max_length=256, description="One weight per latent.")
    threshold: float = Field(description="The edits apply when score >= threshold.")

    @model_validator(mode="after")
    def _check_lengths(self) -> Self:
        if len(self.latents) != len(self.weights):
            raise ValueError(
                f"gate: {len(self.latents)} latents but {len(self.weights)} weights; give one weight per latent"
            )
        if any(v < 0 for v in self.latents):
            raise ValueError("gate: latent indices must be >= 0")
        if any(w != w for w in [*self.weights, self.threshold]):
            raise ValueError("gate: weights and threshold must be numbers, not NaN")
        return self


class InterventionSpec(BaseModel):
    """A set of edits applied together in one forward pass. An empty list is the identity.

    ``gate``: when set, the edits apply only to volumes the gate opens on (module docs).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    edits: list[Edit] = Field(default_factory=list, max_length=256)
    gate: Gate | None = Field(default=None, description="Apply the edits only where this gate opens.")
    protect: list[RegionName] = Field(
        default_factory=list,
        max_length=5,
        description="Regions of the unedited prediction whose voxels keep their unedited label "
        "(e.g. ['TC']: the edit may grow oedema but not rewrite the core).",
    )

    @property
    def needs_mask(self) -> bool:
        """Whether some edit has scope ``mask`` (the caller must pass an array)."""
        return any(e.scope == "mask" for e in self.edits)

    @property
    def reference_cohorts(self) -> set[str]:
        """Cohorts whose statistics a ``patch`` edit needs."""
        return {e.reference_cohort for e in self.edits if e.op == "patch" and e.reference_cohort}


def parse_spec(data: str | bytes | dict) -> InterventionSpec:
    """Parse JSON text or a dict into a spec, raising :class:`InvalidSpec` with readable messages."""
    from pydantic import ValidationError

    from medseglens_core.interventions.errors import InvalidSpec

    try:
        if isinstance(data, dict):
            return InterventionSpec.model_validate(data)
        return InterventionSpec.model_validate_json(data)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"]) or "spec"
            lines.append(f"{loc}: {err['msg']}")
        raise InvalidSpec("invalid intervention spec: " + " | ".join(lines)) from None
