"""The failure-recovery benchmark: oracle, blind and blind-unlabelled steering protocols.

Definitions (all Dice values are fractions 0..1 of the ``region``, default the SNFH label):

* **failure**: a target-cohort case whose region Dice under the unedited model is below
  ``threshold`` (default 0.5).
* **recovered**: a failure whose region Dice under the protocol's edit is >= ``threshold``.
* ``recovered_fraction`` = recovered / failures among the evaluated target cases;
  ``dice_before`` / ``dice_after``: means over those failures.
* ``source_dice_change``: mean region-Dice change on the source cohort's labelled cases under
  the protocol's spec. For ``oracle`` (one spec per failure) it is the mean, over the failure
  specs, of each spec's mean change on all source cases -- what a user would pay on the
  training population by applying one of those per-case repairs blindly.

Protocols:

* ``oracle`` (the paper's): for each failure, greedy search (up to ``max_edits_oracle`` edits)
  over the candidate pool, keeping the spec with the best ground-truth Dice of that case.
  Evaluated on every target case.
* ``blind``: ONE spec per (model, target cohort), learned by greedy search on a calibration
  split -- the first ``calib_n`` target cases (sorted by id) with labels, plus the first half of
  the source cases to penalise harm -- maximising mean calibration Dice minus
  ``source_penalty`` x the source Dice loss; applied unchanged to the remaining target cases.
* ``blind-unlabelled``: no label anywhere. For the top candidates, scale the latent inside the
  predicted tumour's dilated neighbourhood by the ratio of the source to the target cohort's
  mean neighbourhood activation (calibration target cases, predictions only), so the target's
  statistics match the source's; applied unchanged to the remaining target cases.

Candidates come from :func:`~medseglens_core.interventions.search.rank_candidates` (reliance in
the source cohort x activation lost in the target), computed from predictions, never labels.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from medseglens_core.errors import InvalidInput
from medseglens_core.interventions.search import (
    Ranking,
    VolumeItem,
    edit_pool,
    edited_labels,
    greedy,
    profile,
    rank_candidates,
    region_dice,
)
from medseglens_core.interventions.spec import Edit, InterventionSpec

Protocol = Literal["oracle", "blind", "blind-unlabelled"]
PROTOCOLS: tuple[str, ...] = ("oracle", "blind", "blind-unlabelled")


@dataclass(frozen=True)
class RecoveryConfig:
    """Search settings (defaults are those reported).

    Attributes:
        region: region scored (WT, TC, ET, NCR, SNFH); default SNFH, the paper's oedema.
        threshold: failure / recovery Dice threshold (fraction).
        n_candidates: candidate latents searched.
        dilation: voxels by which the predicted WT is dilated for the neighbourhood scope.
        calib_n: labelled target cases in the blind calibration split (<= 5).
        max_edits_oracle / max_edits_blind: greedy search depth.
        source_penalty: blind objective weight on the mean source Dice loss.
        scales / adds: strengths searched (``adds`` in units of the source's mean active code).
        unlabelled_latents: latents matched by blind-unlabelled; unlabelled_max_scale caps its factor.
    """

    region: str = "SNFH"
    threshold: float = 0.5
    n_candidates: int = 6
    dilation: int = 3
    calib_n: int = 5
    max_edits_oracle: int = 2
    max_edits_blind: int = 3
    source_penalty: float = 5.0
    scales: tuple[float, ...] = (2.0, 4.0, 8.0)
    adds: tuple[float, ...] = (0.5, 1.0, 2.0)
    unlabelled_latents: int = 4
    unlabelled_max_scale: float = 8.0


Progress = Callable[[dict[str, Any]], None] | None


class _Evaluator:
    """Dice of the region on items under specs, with the unedited Dice cached."""

    def __init__(self, sae, region: str, reference_stats: dict[str, np.ndarray]) -> None:
        self.sae, self.region, self.stats = sae, region, reference_stats
        self._base: dict[str, float] = {}
        self.evals = 0

    def base(self, item: VolumeItem) -> float:
        if item.case_id not in self._base:
            self._base[item.case_id] = region_dice(item, item.cache.baseline_labels, self.region)
        return self._base[item.case_id]

    def dice(self, item: VolumeItem, spec: InterventionSpec) -> float:
        if not spec.edits:
            return self.base(item)
        self.evals += 1
        return region_dice(item, edited_labels(item, self.sae, spec, self.stats), self.region)

    def mean_change(self, items: Sequence[VolumeItem], spec: InterventionSpec) -> float:
        if not items or not spec.edits:
            return 0.0
        return float(np.mean([self.dice(i, spec) - self.base(i) for i in items]))


def run_recovery(
    sae,
    source_items: Sequence[VolumeItem],
    target_items: Sequence[VolumeItem],
    protocol: Protocol,
    *,
    model_id: str,
    source: str,
    target: str,
    config: RecoveryConfig = RecoveryConfig(),
    progress: Progress = None,
) -> dict[str, Any]:
    """Run one protocol and return the ``recovery.json`` document (see module docstring)."""
    if protocol not in PROTOCOLS:
        raise InvalidInput(f"unknown protocol {protocol!r}; choose one of {list(PROTOCOLS)}")
    if not source_items or not target_items:
        raise InvalidInput("recovery needs at least one source and one target case")
    t0 = time.perf_counter()
    cfg = config
    src = sorted(source_items, key=lambda i: i.case_id)
    tgt = sorted(target_items, key=lambda i: i.case_id)
    if protocol == "oracle":
        calib_t, calib_s, evaluate = [], [], tgt
    else:
        if len(tgt) <= cfg.calib_n:
            raise InvalidInput(
                f"{protocol} needs more than {cfg.calib_n} target cases (calibration + held-out); got {len(tgt)}"
            )
        calib_t, evaluate = tgt[: cfg.calib_n], tgt[cfg.calib_n :]
        calib_s = src[: max(1, len(src) // 2)]
    if protocol != "blind-unlabelled" and any(i.label is None for i in [*evaluate, *calib_t]):
        raise InvalidInput(
            f"protocol {protocol} needs labelled target cases; some {target} case has no label"
        )
    _emit(progress, stage="profiles", n=len(src) + len(tgt))
    profiles_s = [profile(i, sae, cfg.region, cfg.dilation) for i in src]
    profiles_t = [profile(i, sae, cfg.region, cfg.dilation) for i in (calib_t or tgt)]
    ranking = rank_candidates(profiles_s, profiles_t, cfg.n_candidates)
    ev = _Evaluator(sae, cfg.region, {source: ranking.source_mean_active})
    labelled_src = [i for i in src if i.label is not None]
    if protocol == "oracle":
        rows, specs = _oracle(ev, ranking, evaluate, cfg, source, progress)
        changes = [ev.mean_change(labelled_src, s) for s in specs]
        src_change = float(np.mean(changes)) if changes else 0.0
        spec_out: Any = None
    else:
        if protocol == "blind":
            spec = _blind_spec(
                ev, ranking, calib_t, [i for i in calib_s if i.label is not None], cfg, source, progress
            )
        else:
            spec = _unlabelled_spec(ranking, cfg)
        rows = [_row(ev, item, spec, cfg) for item in evaluate]
        src_change = ev.mean_change(labelled_src, spec)
        spec_out = spec.model_dump()
    return _document(
        protocol, model_id, source, target, cfg, rows, ranking, src_change, spec_out,
        calib_t, calib_s, labelled_src, ev.evals, time.perf_counter() - t0,
    )  # fmt: skip


def _emit(progress: Progress, **info: Any) -> None:
    if progress is not None:
        progress(info)


def _row(ev: _Evaluator, item: VolumeItem, spec: InterventionSpec, cfg: RecoveryConfig) -> dict[str, Any]:
    before = ev.base(item)
    failure = before < cfg.threshold
    after = ev.dice(item, spec) if spec.edits else before
    return {
        "case_id": item.case_id,
        "dice_before": before,
        "dice_after": after,
        "failure": failure,
        "recovered": bool(failure and after >= cfg.threshold),
        "spec": spec.model_dump() if spec.edits else None,
    }


def _oracle(ev, ranking: Ranking, items, cfg: RecoveryConfig, source: str, progress: Progress):
    pool = edit_pool(
        ranking, dilation=cfg.dilation, scales=cfg.scales, adds=cfg.adds, reference_cohort=source
    )
    rows, specs = [], []
    for n, item in enumerate(items):
        if ev.base(item) >= cfg.threshold:
            rows.append(_row(ev, item, InterventionSpec(), cfg))
            continue
        spec, _, _ = greedy(pool, lambda s, it=item: ev.dice(it, s), max_edits=cfg.max_edits_oracle)
        rows.append(_row(ev, item, spec, cfg))
        specs.append(spec)
        _emit(progress, stage="oracle", case=n + 1, of=len(items), dice=rows[-1]["dice_after"])
    return rows, specs


def _blind_spec(ev, ranking, calib_t, calib_s, cfg: RecoveryConfig, source: str, progress: Progress):
    pool = edit_pool(
        ranking, dilation=cfg.dilation, scales=cfg.scales, adds=cfg.adds,
        scopes=("predicted_region",), reference_cohort=source,
    )  # fmt: skip
    best_target = [-1.0]

    def objective(spec: InterventionSpec) -> float:
        gain = float(np.mean([ev.dice(i, spec) for i in calib_t]))
        if gain <= best_target[0] - 1e-9 and spec.edits:
            return gain - 1.0  # cannot win: the source penalty is never positive
        value = gain + cfg.source_penalty * min(0.0, ev.mean_change(calib_s, spec))
        best_target[0] = max(best_target[0], value)
        return value

    spec, value, evals = greedy(pool, objective, max_edits=cfg.max_edits_blind)
    _emit(progress, stage="blind", objective=value, evals=evals, edits=len(spec.edits))
    return spec


def _unlabelled_spec(ranking: Ranking, cfg: RecoveryConfig) -> InterventionSpec:
    edits = []
    for j, ms, mt in zip(ranking.latents, ranking.source_mean, ranking.target_mean, strict=True):
        if len(edits) >= cfg.unlabelled_latents:
            break
        if mt <= 0 or ms <= mt * 1.05:
            continue
        factor = float(min(ms / mt, cfg.unlabelled_max_scale))
        edits.append(
            Edit(
                latent=j,
                op="scale",
                value=round(factor, 4),
                scope="predicted_region",
                region="WT",
                dilation=cfg.dilation,
            )
        )
    return InterventionSpec(edits=edits)


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _document(
    protocol, model_id, source, target, cfg, rows, ranking, src_change, spec_out,
    calib_t, calib_s, labelled_src, evals, seconds,
) -> dict[str, Any]:  # fmt: skip
    fails = [r for r in rows if r["failure"]]
    n_rec = sum(r["recovered"] for r in fails)
    notes = {
        "failure": f"target case with {cfg.region} Dice < {cfg.threshold} under the unedited model",
        "recovered": f"failure whose {cfg.region} Dice under the edit is >= {cfg.threshold}",
        "dice": "fractions 0..1; dice_before/dice_after are means over failures",
        "source_dice_change": (
            "mean over the failure specs of the mean Dice change on all labelled source cases"
            if protocol == "oracle"
            else "mean Dice change on all labelled source cases under the one spec"
        ),
        "candidates": "ranked from model predictions only: source reliance x activation lost in target",
    }
    return {
        "protocol": protocol,
        "model_id": model_id,
        "target": target,
        "source": source,
        "region": cfg.region,
        "threshold": cfg.threshold,
        "n_cases": len(rows),
        "n_failures": len(fails),
        "n_recovered": n_rec,
        "recovered_fraction": n_rec / len(fails) if fails else None,
        "dice_before": _mean([r["dice_before"] for r in fails]),
        "dice_after": _mean([r["dice_after"] for r in fails]),
        "dice_before_all": _mean([r["dice_before"] for r in rows]),
        "dice_after_all": _mean([r["dice_after"] for r in rows]),
        "source_dice_change": src_change,
        "n_source_cases": len(labelled_src),
        "spec": spec_out,
        "calibration": None
        if protocol == "oracle"
        else {
            "target_case_ids": [i.case_id for i in calib_t],
            "source_case_ids": [i.case_id for i in calib_s],
        },
        "candidates": ranking.to_json(),
        "cases": rows,
        "evaluations": evals,
        "time_s": round(seconds, 2),
        "config": asdict(cfg),
        "definitions": notes,
    }
