"""Intervention schemas: the request (the core's ``Edit`` list) and the effect summary."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from medseglens_core.interventions.spec import Edit, Gate, RegionName
from service.schemas.segmentations import CATALOG_PATTERN, ID_PATTERN
from service.schemas.trust import OOD, Provenance


class InterventionCreate(BaseModel):
    """Edit SAE latents inside one volume's forward pass.

    Edits use the core's spec (``ablate``, ``clamp``, ``scale``, ``add``, ``patch``; scopes ``all``,
    ``active``, ``predicted_region``, ``box``, ``slices``, ``mask``). Scope ``mask`` takes its mask from
    ``mask_volume_id``: an uploaded volume whose label map (any label > 0) is the mask, on the same
    RAS grid as ``volume_id`` (422 otherwise, or when it is missing or unlabelled).
    """

    model_config = ConfigDict(extra="forbid")

    volume_id: str = Field(pattern=ID_PATTERN)
    model_id: str = Field(pattern=CATALOG_PATTERN)
    sae_id: str = Field(pattern=CATALOG_PATTERN, description="An SAE trained on `model_id` (else 422).")
    edits: list[Edit] = Field(default_factory=list, max_length=256, description="Applied together.")
    gate: Gate | None = Field(
        default=None,
        description=(
            "Apply the edits only when sum_j weights[j] * log(rate_j + 1e-4) >= threshold, rate_j the "
            "fraction of the volume's brain tokens (hook cells holding brain) where latent j fires, "
            "e.g. the `spec.gate` of a blind recovery.json; otherwise the prediction is unchanged."
        ),
    )
    gate_sae_id: str | None = Field(
        default=None,
        pattern=CATALOG_PATTERN,
        description="For a gate whose `hook` differs from the SAE's: the SAE of that hook (same model).",
    )
    protect: list[RegionName] = Field(
        default_factory=list,
        max_length=5,
        description=(
            "Regions of the unedited prediction whose voxels keep their unedited label (e.g. ['TC']: "
            "the edits may grow oedema but not relabel the core), e.g. the `spec.protect` of a recovery.json."
        ),
    )
    mask_volume_id: str | None = Field(
        default=None,
        pattern=ID_PATTERN,
        description="For scope `mask`: a volume whose label map (> 0) is the mask, same grid as volume_id.",
    )


class RegionSummary(BaseModel):
    """Region volumes (mL) and, when the volume is labelled, Dice (0..1) per region/label."""

    region_volumes_ml: dict[str, float]
    dice: dict[str, float] | None


class EditInfo(BaseModel):
    """What one edit did: tokens in scope and changed, mean code over its scope before and after."""

    latent: int
    op: str
    scope: str
    tokens_in_scope: int
    tokens_changed: int
    mean_before: float
    mean_after: float


class InterventionOut(BaseModel):
    """A stored intervention: baseline vs edited prediction; changes are edited - baseline."""

    id: str
    created: datetime
    volume_id: str
    model_id: str
    sae_id: str
    edits: list[Edit]
    gate: Gate | None = Field(default=None, description="The request's gate, if any.")
    gate_score: float | None = Field(default=None, description="The gate's score on this volume.")
    gate_open: bool | None = Field(default=None, description="Whether the edits applied (gate only).")
    protect: list[RegionName] = Field(default_factory=list, description="The request's protected regions.")
    baseline: RegionSummary
    edited: RegionSummary
    volume_change_ml: dict[str, float]
    dice_change: dict[str, float] | None
    changed_voxels: int = Field(description="Voxels whose label differs from the unedited prediction.")
    changed_tokens: int = Field(description="Hook tokens whose SAE code changed (spliced).")
    rerun_slices: int = Field(description="Slices whose network suffix re-ran.")
    prefix_cache_hit: bool = Field(description="True when the prefix activations came from the cache.")
    edit_info: list[EditInfo]
    timings: dict[str, float]
    ood: OOD | None = Field(
        default=None, description="Out-of-distribution flag of the volume (null on older rows)."
    )
    provenance: Provenance | None = Field(
        default=None, description="Weights and versions (null on older rows)."
    )
