"""Fitting a population gate: tell target-cohort scans from source-cohort scans by latents alone.

A population-specific repair (steering oedema latents up on ``ssa``) can hurt the population the
model was trained on. The blind protocols therefore attach a :class:`~..spec.Gate` to their
spec: the edits apply only to volumes whose latent firing rates look like the target's. No
segmentation label is used, only which cohort each calibration scan came from.

The fit (:func:`fit_gate`) on per-volume log firing rates ``l_j = log(rate_j + GATE_EPS)``:

1. per latent, the standardised difference ``t_j = (mean_target - mean_source) / s_j`` with
   ``s_j`` the pooled standard deviation (floored at ``sd_floor`` so that a latent constant
   within both small groups cannot dominate);
2. the ``n_latents`` latents with the largest ``|t_j|``, weights ``w_j = sign(t_j) / (s_j n)``
   (the score is the mean sign-aligned standardised log rate);
3. threshold halfway between the lowest target score and the highest source score. When the
   two groups overlap on the calibration scans there is no gate (None): the spec would then
   have to be safe on the source without one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medseglens_core.interventions.apply import firing_rates, gate_score
from medseglens_core.interventions.batch import item_codes
from medseglens_core.interventions.search import VolumeItem
from medseglens_core.interventions.spec import GATE_EPS, Gate


@dataclass(frozen=True)
class GateFit:
    """A fitted gate and how well it separated the calibration scans.

    ``gate`` is None when the groups overlapped. ``margin``: lowest target score minus highest
    source score (> 0 when separated), in the score's units (standard deviations of log rate).
    """

    gate: Gate | None
    margin: float
    target_scores: list[float]
    source_scores: list[float]


def item_rates(item: VolumeItem, sae: Any) -> np.ndarray:
    """``(d_sae,)`` firing rate of each latent over the item's hook tokens."""
    return firing_rates(item.cache, sae, item_codes(item.cache, sae)).numpy()


def fit_gate(
    sae: Any,
    target: Sequence[VolumeItem],
    source: Sequence[VolumeItem],
    *,
    n_latents: int = 8,
    sd_floor: float = 0.1,
) -> GateFit:
    """Fit a gate opening on ``target`` scans and closed on ``source`` scans (module docs)."""
    if not target or not source:
        return GateFit(None, float("nan"), [], [])
    lt = np.log(np.stack([item_rates(i, sae) for i in target]) + GATE_EPS)
    ls = np.log(np.stack([item_rates(i, sae) for i in source]) + GATE_EPS)
    var = (lt.var(axis=0, ddof=1 if len(lt) > 1 else 0) + ls.var(axis=0, ddof=1 if len(ls) > 1 else 0)) / 2
    sd = np.maximum(np.sqrt(var), sd_floor)
    t = (lt.mean(axis=0) - ls.mean(axis=0)) / sd
    n = min(n_latents, t.size)
    pick = np.argsort(-np.abs(t), kind="stable")[:n]
    weights = np.sign(t[pick]) / (sd[pick] * n)
    st = (lt[:, pick] * weights).sum(axis=1)
    ss = (ls[:, pick] * weights).sum(axis=1)
    margin = float(st.min() - ss.max())
    gate = None
    if margin > 0:
        gate = Gate(
            latents=[int(j) for j in pick],
            weights=[float(w) for w in weights],
            threshold=float((st.min() + ss.max()) / 2),
        )
    return GateFit(gate, margin, [float(v) for v in st], [float(v) for v in ss])


def gate_opens(items: Sequence[VolumeItem], sae: Any, gate: Gate | None) -> list[bool]:
    """Whether ``gate`` opens on each item (True everywhere without a gate)."""
    if gate is None:
        return [True] * len(items)
    return [gate_score(i.cache, sae, gate, item_codes(i.cache, sae)) >= gate.threshold for i in items]


def gate_report(
    sae: Any, fit: GateFit, evaluated: Sequence[VolumeItem], heldout_source: Sequence[VolumeItem]
) -> dict[str, Any]:
    """How the gate separated the calibration scans and where it opens on scans it never saw."""
    return {
        "fitted": fit.gate is not None,
        "margin": fit.margin,
        "calibration_target_scores": fit.target_scores,
        "calibration_source_scores": fit.source_scores,
        "opens_on_evaluated_target": sum(gate_opens(evaluated, sae, fit.gate)),
        "n_evaluated_target": len(evaluated),
        "opens_on_heldout_source": sum(gate_opens(heldout_source, sae, fit.gate)),
        "n_heldout_source": len(heldout_source),
    }
