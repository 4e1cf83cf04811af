"""The diff-driven repair (``recover --protocol diff``): latents read from the diff report.

The paper's chain is: the cross-cohort diff names population-specific latents; they are the
bottleneck of the failure; editing them back to the source cohort's statistics repairs it. This
module turns a diff report into candidate specs for that chain; the recovery benchmark then
chooses one exactly as the blind protocol does (best mean Dice on <= 5 labelled calibration
target cases, within the source-harm tolerances, behind the same population gate).

Latents (:func:`diff_latents`): the model section's ``specific[<target>]`` rows of a diff report
(``medseglens diff``, or the zoo's ``reports/zoo/report.json``) computed with the SAME SAE
(checked by id and, where the report records it, by the SAE file's sha256). They are ordered by
the source cohort's attribution to the scored region (activation x gradient, from predictions,
no label), so the latents the model relies on come first; the subsets tried are every
specific latent (at most ``max_latents``, the first by attribution), the top ``top``, the
``down`` ones (what the target lost), and the latents specific in the scored region's own
contrast (the report's ``families``: mean activation per labelled SNFH token, target vs source),
all of them and the ``down`` ones. A whole-brain diff finds what differs between the cohorts (on
the synthetic ssa cohort: necrotic-core latents); the region contrast finds what differs where
the model has to see the oedema, which is where a repair has to act.

The report's latents are found by significance tests on what differs; on the demo zoo few of
them are latents the SNFH prediction relies on (U-Net: 4 of 38 among the 40 most attributed). So
the protocol also reads a second, reliance-weighted diff (:func:`effect_ranking`) from its own
calibration cases: per latent, the first-order effect on the region's log-probability of
restoring the source's mean neighbourhood code (attribution patching),
``effect_j = A_j (1 - t_j / s_j)`` = ``g_j n (s_j - t_j)``, with ``A_j`` the source attribution
(``g_j`` its mean gradient per unit code, ``n`` the tokens), ``s_j`` / ``t_j`` the source /
target calibration cases' mean neighbourhood code. Its top 10 / 20 / 40 latents with a positive
effect are three more subsets (``effect10`` ...); recovery.json names both sources
(``diff_latents.latents`` from the report, ``diff_latents.effect`` from the calibration diff).

Edits (:func:`diff_families`), on each subset, with the source statistics measured on the
source cases (``Ranking.reference``: a latent's code when active where the model predicts the
region; ``source_mean`` / ``target_mean``: mean code over the predicted-tumour neighbourhood):

* ``diff-patch-active b``: the latent set to ``b x`` the source value where it already fires;
* ``diff-patch TC+d b``: set to ``b x`` the source value on the predicted core dilated by ``d``;
* ``diff-add TC+d a``: additive steering by ``a x (source_mean - target_mean)`` there;
* ``diff-scale TC+d``: multiplicative steering by ``source_mean / target_mean`` (clipped to
  [1/8, 8]) there.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseglens_core.errors import InvalidInput
from medseglens_core.interventions.spec import Edit, InterventionSpec


@dataclass(frozen=True)
class DiffGrid:
    """Candidate strengths and scopes of the diff-driven edits."""

    top: int = 5
    max_latents: int = 64  # a spec holds at most 256 edits; the diff may name hundreds of latents
    patch_active: tuple[float, ...] = (1.0, 2.0)
    patch_region: tuple[float, ...] = (1.0, 2.0, 4.0)  # the blind family's clamp strengths
    add: tuple[float, ...] = (1.0, 2.0, 4.0)
    dilations: tuple[int, ...] = (2, 4, 6)
    effect_sizes: tuple[int, ...] = (10, 20, 40)  # () : the report's latents only


@dataclass(frozen=True)
class DiffLatents:
    """The target-specific latents of one model/SAE in a diff report, and where they came from."""

    latents: list[int]
    directions: dict[int, str]
    report: str
    sae_id: str
    target: str
    reference: str
    families: dict[int, dict[str, str]] = field(default_factory=dict)  # latent -> {family: direction}

    def to_json(self) -> dict[str, Any]:
        return {
            "report": self.report,
            "sae_id": self.sae_id,
            "target": self.target,
            "reference": self.reference,
            "latents": self.latents,
            "directions": {str(k): v for k, v in self.directions.items()},
            "families": {str(k): v for k, v in self.families.items()},
        }

    def in_region(self, region: str, direction: str | None = None) -> list[int]:
        """The latents specific in ``region``'s neighbourhood contrast (optionally in one direction)."""
        return [
            j
            for j in self.latents
            if region in self.families.get(j, {}) and direction in (None, self.families[j][region])
        ]


def diff_latents(
    report_path: Path, model_id: str, sae_id: str, target: str, sae_sha256: str | None = None
) -> DiffLatents:
    """Read the target-specific latents of ``model_id`` from a diff report (module docs).

    Raises InvalidInput when the report is unreadable, lacks the model or the target cohort, or
    was computed with another SAE (a latent index means nothing across SAEs).
    """
    try:
        report = json.loads(Path(report_path).read_text())
        models = report["models"]
    except FileNotFoundError:
        raise InvalidInput(f"no diff report at {report_path}; build one with `medseglens diff`") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise InvalidInput(f"{report_path} is not a diff report (report.json of `medseglens diff`)") from None
    section = models.get(model_id) if isinstance(models, dict) else None
    if not isinstance(section, dict):
        raise InvalidInput(f"the diff report {Path(report_path).name} has no model {model_id!r}")
    if str(section.get("sae_id")) != sae_id:
        raise InvalidInput(
            f"the diff report was computed with SAE {section.get('sae_id')!r}, not {sae_id!r}: "
            "its latent indices do not apply; rebuild it with this SAE"
        )
    recorded = (section.get("provenance") or {}).get("sae_sha256")
    if sae_sha256 and recorded and recorded != sae_sha256:
        raise InvalidInput(
            f"the diff report's SAE {sae_id!r} has sha256 {recorded[:12]}..., the SAE on disk "
            f"{sae_sha256[:12]}...: the report is from another training of it; rebuild it"
        )
    rows = (section.get("specific") or {}).get(target)
    if rows is None:
        have = sorted(section.get("specific") or {})
        raise InvalidInput(
            f"the diff report has no cohort {target!r} (has {have}); build one with `medseglens diff` "
            "on a data folder holding it"
        )
    ref = (section.get("counts") or {}).get(target, {}).get("reference", report.get("source_cohort"))
    latents = [int(r["latent"]) for r in rows]
    return DiffLatents(
        latents=latents,
        directions={int(r["latent"]): str(r.get("direction", "none")) for r in rows},
        families={int(r["latent"]): dict(r.get("families") or {}) for r in rows},
        report=str(report_path),
        sae_id=sae_id,
        target=target,
        reference=str(ref),
    )


def diff_families(
    diff: DiffLatents,
    attribution: np.ndarray,
    reference: np.ndarray,
    source_mean: np.ndarray,
    target_mean: np.ndarray,
    grid: DiffGrid = DiffGrid(),
    region: str = "SNFH",
) -> list[tuple[str, InterventionSpec]]:
    """Named candidate specs over subsets of the diff latents (module docs)."""

    def by_attribution(latents: list[int]) -> list[int]:
        return sorted(latents, key=lambda j: (-float(attribution[j]), j))[: grid.max_latents]

    ordered = by_attribution(diff.latents)
    subsets: dict[str, list[int]] = {"all": ordered}
    if len(ordered) > grid.top:
        subsets[f"top{grid.top}"] = ordered[: grid.top]
    down = [j for j in ordered if diff.directions.get(j) == "down"]
    if down and down != ordered:
        subsets["down"] = down
    # the latents that differ ON the scored region's labelled tokens (the neighbourhood contrast)
    for name, lat in ((region, diff.in_region(region)), (f"{region}-down", diff.in_region(region, "down"))):
        lat = by_attribution(lat)
        if lat and lat not in subsets.values():
            subsets[name] = lat
    effect = effect_ranking(attribution, source_mean, target_mean)
    for m in grid.effect_sizes:
        lat = [j for j, _ in effect[:m]]
        if lat and lat not in subsets.values():
            subsets[f"effect{m}"] = lat
    out: list[tuple[str, InterventionSpec]] = []
    for name, lat in subsets.items():
        if not lat:
            continue
        for b in grid.patch_active:
            edits = [Edit(latent=j, op="clamp", value=_r(b * reference[j]), scope="active") for j in lat]
            out.append((f"diff-patch-active {name} b={b}", InterventionSpec(edits=edits)))
        for d in grid.dilations:
            where = {"scope": "predicted_region", "region": "TC", "dilation": d}
            for b in grid.patch_region:
                edits = [Edit(latent=j, op="clamp", value=_r(b * reference[j]), **where) for j in lat]
                out.append((f"diff-patch TC+{d} {name} b={b}", InterventionSpec(edits=edits)))
            for a in grid.add:
                edits = [Edit(latent=j, op="add", value=_r(a * (source_mean[j] - target_mean[j])), **where)
                         for j in lat if source_mean[j] != target_mean[j]]  # fmt: skip
                if edits:
                    out.append((f"diff-add TC+{d} {name} a={a}", InterventionSpec(edits=edits)))
            ratio = [(j, float(np.clip(source_mean[j] / target_mean[j], 0.125, 8.0)))
                     for j in lat if target_mean[j] > 0]  # fmt: skip
            if ratio:
                edits = [Edit(latent=j, op="scale", value=_r(f), **where) for j, f in ratio]
                out.append((f"diff-scale TC+{d} {name}", InterventionSpec(edits=edits)))
    return out


def effect_ranking(
    attribution: np.ndarray, source_mean: np.ndarray, target_mean: np.ndarray
) -> list[tuple[int, float]]:
    """``(latent, effect)`` with a positive first-order effect of restoring the source's mean
    neighbourhood code, largest first: ``effect_j = A_j (1 - t_j / s_j)`` (module docs).

    Latents silent in the source (``s_j = 0``) have no estimate; a latent the target has more of
    has a positive effect only where its attribution is negative (it suppresses the region).
    """
    s, t, a = (np.asarray(v, dtype=np.float64) for v in (source_mean, target_mean, attribution))
    effect = np.where(s > 0, a * (1.0 - t / np.where(s > 0, s, 1.0)), 0.0)
    order = np.argsort(-effect, kind="stable")
    return [(int(j), float(effect[j])) for j in order if effect[j] > 0]


def used_latents(spec: dict[str, Any] | None) -> list[int]:
    """The latents a chosen spec edits (sorted, unique)."""
    return sorted({int(e["latent"]) for e in (spec or {}).get("edits", [])})


def _r(v: float) -> float:
    return round(float(v), 5)
