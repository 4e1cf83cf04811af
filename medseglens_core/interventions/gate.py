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
3. threshold halfway between the lowest target score and the highest source score.

There is no gate (None) when the two groups overlap on the calibration scans, or when the fit
does not generalise within them: refitted without each calibration scan in turn (leave one
out), the gate's balanced accuracy on the left-out scans -- the mean of the fraction of target
scans it opens on and the fraction of source scans it stays closed on -- must be at least
``min_loo_accuracy`` (0.8). A gate that fails this would open on source scans it has not seen
(on the demo zoo: SegFormer stage 3, 4-8 errors of 13 scans; U-Net bottleneck, 1-2) or stay
closed on the target it was fitted for; the spec then has to be safe on the source without one
(the blind protocol's harm check decides). Balanced, because the groups are unequal: with 3
target and 16 source scans, a gate that misses all 3 left-out targets still classifies 84% of
the 19 scans (suite-9600, U-Net under bright_compression: such a gate opened on 1 of 9
evaluated scans).
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

    ``gate`` is None when the groups overlapped or the fit did not generalise. ``margin``: lowest
    target score minus highest source score (> 0 when separated), in the score's units (standard
    deviations of log rate). ``loo_errors``: left-out scans misclassified, of which
    ``loo_target_errors`` target scans the refitted gate stayed closed on.
    """

    gate: Gate | None
    margin: float
    target_scores: list[float]
    source_scores: list[float]
    loo_errors: int = 0
    loo_target_errors: int = 0


def item_rates(item: VolumeItem, sae: Any, hook: str | None = None) -> np.ndarray:
    """``(d_sae,)`` firing rate of each latent of ``sae`` over the item's brain tokens at
    ``hook`` (default: the item's cache hook, whose codes are then computed once and kept)."""
    if hook is None or hook == item.cache.hook:
        return firing_rates(item.cache, sae, item_codes(item.cache, sae)).numpy()
    return firing_rates(item.cache, sae, hook=hook).numpy()


def _fit(lt: np.ndarray, ls: np.ndarray, n_latents: int, sd_floor: float):
    """``(pick, weights, target scores, source scores)`` on log rates ``(n, d_sae)``."""
    ddof_t, ddof_s = (1 if len(lt) > 1 else 0), (1 if len(ls) > 1 else 0)
    sd = np.maximum(np.sqrt((lt.var(axis=0, ddof=ddof_t) + ls.var(axis=0, ddof=ddof_s)) / 2), sd_floor)
    t = (lt.mean(axis=0) - ls.mean(axis=0)) / sd
    n = min(n_latents, t.size)
    pick = np.argsort(-np.abs(t), kind="stable")[:n]
    weights = np.sign(t[pick]) / (sd[pick] * n)
    return pick, weights, (lt[:, pick] * weights).sum(axis=1), (ls[:, pick] * weights).sum(axis=1)


def _loo_errors(lt: np.ndarray, ls: np.ndarray, n_latents: int, sd_floor: float) -> tuple[int, int]:
    """``(target, source)`` calibration scans misclassified by the gate refitted without them."""
    errors = [0, 0]
    for group, rows in ((0, lt), (1, ls)):
        for i in range(len(rows)):
            rest = np.delete(rows, i, axis=0)
            a, b = (rest, ls) if group == 0 else (lt, rest)
            pick, w, st, ss = _fit(a, b, n_latents, sd_floor)
            score = float((rows[i, pick] * w).sum())
            threshold = (st.min() + ss.max()) / 2
            errors[group] += int((score >= threshold) != (group == 0))
    return errors[0], errors[1]


def balanced_accuracy(errors_target: int, n_target: int, errors_source: int, n_source: int) -> float:
    """Mean of the per-group accuracies (each group counts half, whatever its size)."""
    return 1.0 - (errors_target / n_target + errors_source / n_source) / 2


def fit_gate(
    sae: Any,
    target: Sequence[VolumeItem],
    source: Sequence[VolumeItem],
    *,
    n_latents: int = 32,
    sd_floor: float = 0.1,
    min_loo_accuracy: float = 0.8,
    hook: str | None = None,
) -> GateFit:
    """Fit a gate opening on ``target`` scans and closed on ``source`` scans (module docs).

    ``sae`` reads ``hook`` (default: the items' cache hook); the gate records a hook other than
    the cache's so that applying it asks for that SAE.
    """
    if len(target) < 2 or len(source) < 2:
        return GateFit(None, float("nan"), [], [])
    lt = np.log(np.stack([item_rates(i, sae, hook) for i in target]) + GATE_EPS)
    ls = np.log(np.stack([item_rates(i, sae, hook) for i in source]) + GATE_EPS)
    pick, weights, st, ss = _fit(lt, ls, n_latents, sd_floor)
    margin = float(st.min() - ss.max())
    loo_t, loo_s = _loo_errors(lt, ls, n_latents, sd_floor) if margin > 0 else (0, 0)
    gate = None
    if margin > 0 and balanced_accuracy(loo_t, len(lt), loo_s, len(ls)) >= min_loo_accuracy:
        own = hook is None or hook == target[0].cache.hook
        gate = Gate(
            hook=None if own else hook,
            latents=[int(j) for j in pick],
            weights=[float(w) for w in weights],
            threshold=float((st.min() + ss.max()) / 2),
        )
    return GateFit(gate, margin, [float(v) for v in st], [float(v) for v in ss], loo_t + loo_s, loo_t)


def gate_opens(items: Sequence[VolumeItem], sae: Any, gate: Gate | None) -> list[bool]:
    """Whether ``gate`` opens on each item (True everywhere without a gate). ``sae``: the SAE
    the gate reads (of ``gate.hook`` when it names another hook)."""
    if gate is None:
        return [True] * len(items)
    return [
        gate_score(i.cache, sae, gate, item_codes(i.cache, sae) if gate.hook is None else None, sae)
        >= gate.threshold
        for i in items
    ]


def gate_report(
    sae: Any, fit: GateFit, evaluated: Sequence[VolumeItem], heldout_source: Sequence[VolumeItem]
) -> dict[str, Any]:
    """How the gate separated the calibration scans and where it opens on scans it never saw."""
    return {
        "fitted": fit.gate is not None,
        "margin": fit.margin,
        "leave_one_out_errors": fit.loo_errors,
        "leave_one_out_target_errors": fit.loo_target_errors,
        "calibration_target_scores": fit.target_scores,
        "calibration_source_scores": fit.source_scores,
        "opens_on_evaluated_target": sum(gate_opens(evaluated, sae, fit.gate)),
        "n_evaluated_target": len(evaluated),
        "opens_on_heldout_source": sum(gate_opens(heldout_source, sae, fit.gate)),
        "n_heldout_source": len(heldout_source),
    }
