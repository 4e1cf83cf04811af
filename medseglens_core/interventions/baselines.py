"""Non-latent baselines of the recovery benchmark, and the side effects of any repair.

A latent repair is only worth its machinery if it beats what a radiologist's script could do
without an SAE. Every ``recover`` protocol therefore also runs, on the SAME evaluated cases,
with the SAME calibration cases and the SAME population gate, four edits that never touch a
latent:

* ``logit_bias_global``: add ``b`` to the region's logit (SNFH by default) on every pixel.
* ``logit_bias_core``: add ``b`` only inside the unedited prediction's tumour core (TC),
  dilated by ``d`` pixels in 3-D on the model grid: the same "grow oedema around the core"
  locality the latent specs get from their ``predicted_region`` scope.
* ``morph_ring``: relabel background voxels of the brain within the predicted core dilated by
  ``d`` voxels (case grid) as the region (a morphological ring, no network at all).
* ``histogram_match``: input-side intensity standardisation: each modality's in-brain
  intensity quantiles of the (z-scored) model input are mapped onto the source cohort's mean
  quantiles (from unlabelled source scans), blended by strength ``a``; the network then runs
  unchanged on the matched slices.

Each baseline has a small parameter grid (:class:`BaselineGrid`). Its parameter is chosen by the
protocol's own rule, so no baseline sees a label the latent protocol does not:

* ``oracle``: per failure, the best parameter by that case's Dice (as the oracle's specs);
* ``labelled`` (``blind``, ``diff``): the best mean Dice on the labelled calibration target
  cases among parameters within the source-harm tolerances on the calibration source cases
  and, as for the latent specs, within the core guard on the calibration target cases (mean
  TC and ET Dice change less ``core_guard_se`` standard errors >= ``-core_tolerance``,
  :func:`core_change_bound`); no edit when none beats the unedited mean. Before the guard, a
  baseline could win by buying oedema with the core (SegFormer, ssa draw K: logit_bias_core
  3/4 at ET -0.068 held out, against a latent spec held to -0.02);
* ``unlabelled`` (``blind-unlabelled``, ``diff-unlabelled``): the parameter whose predicted region-to-core volume
  ratio on the calibration target scans comes closest to the source cohort's, among those
  that keep the calibration source predictions (Dice vs the unedited prediction) within
  ``1 - 5 x source_tolerance``.

With a gate, a baseline edits only volumes the gate opens on (the others keep the unedited
prediction bit for bit), exactly as the latent spec does; with the protocol's ``protect``
regions (``RecoveryConfig.protect``, TC by default), voxels the unedited model put there keep
their label under every baseline, as under the latent specs.

``side_effects`` (for protocols and baselines alike): over ALL evaluated target cases, the mean
change of TC, ET and WT Dice, and of the predicted SNFH volume in mL (``SNFH_ml``), plus
``SNFH_ml_error``: the change of the mean absolute SNFH volume error vs the ground truth (> 0:
the volume moved away from the truth, e.g. an overshoot).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch

from medseglens_core.interventions.apply import dilate, gate_score, region_mask
from medseglens_core.interventions.search import VolumeItem
from medseglens_core.interventions.spec import Gate
from medseglens_core.metrics.brats import LABELS, dice

BASELINES: tuple[str, ...] = ("logit_bias_global", "logit_bias_core", "morph_ring", "histogram_match")
Mode = Literal["oracle", "labelled", "unlabelled"]
SIDE_REGIONS: tuple[str, ...] = ("TC", "ET", "WT")
#: Quantile levels of the histogram matching.
QUANTILES = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True)
class BaselineGrid:
    """Parameters tried per baseline (chosen per protocol rule, see module docs)."""

    biases: tuple[float, ...] = (0.5, 1.0, 2.0, 3.0, 4.0)
    core_dilations: tuple[int, ...] = (4, 6)
    ring_dilations: tuple[int, ...] = (1, 2, 4, 6)
    hist_strengths: tuple[float, ...] = (0.5, 1.0)


@dataclass(frozen=True)
class Candidate:
    """One baseline at one parameter setting."""

    baseline: str
    params: tuple[tuple[str, float], ...]

    @property
    def name(self) -> str:
        return self.baseline + "(" + ", ".join(f"{k}={v:g}" for k, v in self.params) + ")"


def candidates(grid: BaselineGrid) -> dict[str, list[Candidate]]:
    """Every baseline's parameter settings."""
    return {
        "logit_bias_global": [Candidate("logit_bias_global", (("bias", b),)) for b in grid.biases],
        "logit_bias_core": [
            Candidate("logit_bias_core", (("bias", b), ("dilation", d)))
            for b in grid.biases
            for d in grid.core_dilations
        ],
        "morph_ring": [Candidate("morph_ring", (("dilation", d),)) for d in grid.ring_dilations],
        "histogram_match": [Candidate("histogram_match", (("strength", a),)) for a in grid.hist_strengths],
    }


def source_quantiles(items: Sequence[VolumeItem]) -> np.ndarray:
    """``(4, len(QUANTILES))`` mean per-modality in-brain quantiles of the items' model input."""
    return np.mean([_quantiles(i.cache.prepared.slices) for i in items], axis=0)


def _brain_pixels(slices: torch.Tensor) -> torch.Tensor:
    """``(Z, S, S)`` bool: pixels of the prepared stack inside the brain (z-scoring leaves 0 outside)."""
    return (slices != 0).any(dim=1)


def _quantiles(slices: torch.Tensor) -> np.ndarray:
    brain = _brain_pixels(slices)
    out = np.zeros((slices.shape[1], len(QUANTILES)))
    for c in range(slices.shape[1]):
        values = slices[:, c][brain].double().numpy()
        out[c] = np.quantile(values, QUANTILES) if values.size else 0.0
    return out


def matched_slices(slices: torch.Tensor, reference: np.ndarray, strength: float) -> torch.Tensor:
    """The prepared stack with each modality's in-brain intensities mapped onto ``reference``
    quantiles (monotone piecewise-linear map), blended ``(1 - strength) x + strength x'``."""
    own = _quantiles(slices)
    brain = _brain_pixels(slices)
    out = slices.clone()
    for c in range(slices.shape[1]):
        v = slices[:, c][brain].double().numpy()
        q = np.maximum.accumulate(own[c]) + np.arange(len(QUANTILES)) * 1e-9  # strictly increasing
        mapped = np.interp(v, q, reference[c])
        plane = out[:, c]
        plane[brain] = torch.from_numpy((1.0 - strength) * v + strength * mapped).to(out.dtype)
    return out


class BaselineEval:
    """Label maps and scores of items under baseline candidates (cached per item and candidate).

    ``gate``/``sae``/``gate_sae``: the protocol's population gate (None: every volume is edited).
    ``reference``: source quantiles for ``histogram_match`` (:func:`source_quantiles`).
    ``protect``: regions of the unedited prediction every baseline keeps (the latent specs'
    ``protect``), so a baseline cannot relabel the core either.
    """

    def __init__(self, region: str, reference: np.ndarray, gate: Gate | None = None, sae: Any = None,
                 gate_sae: Any = None, protect: Sequence[str] = ()) -> None:  # fmt: skip
        self.region, self.reference, self.protect = region, reference, tuple(protect)
        self.gate, self.sae, self.gate_sae = gate, sae, gate_sae
        self.channel = LABELS[region] if region in LABELS else LABELS["SNFH"]
        self._open: dict[int, bool] = {}
        self._scores: dict[tuple[int, Candidate | None], dict[str, float]] = {}

    def gate_open(self, item: VolumeItem) -> bool:
        """Whether the gate lets edits through on ``item`` (always without a gate)."""
        if self.gate is None:
            return True
        key = id(item)
        if key not in self._open:
            score = gate_score(item.cache, self.sae, self.gate, gate_sae=self.gate_sae)
            self._open[key] = score >= self.gate.threshold
        return self._open[key]

    def labels(self, item: VolumeItem, cand: Candidate | None) -> np.ndarray:
        """Case-grid labels of ``item`` under ``cand`` (None or a closed gate: unedited)."""
        cache = item.cache
        if cand is None or not self.gate_open(item):
            return cache.baseline_labels
        p = dict(cand.params)
        if cand.baseline in ("logit_bias_global", "logit_bias_core"):
            logits = cache.baseline_logits.clone()
            bias = torch.zeros(logits.shape[0], *logits.shape[2:])
            if cand.baseline == "logit_bias_global":
                bias += p["bias"]
            else:
                core = np.isin(logits.argmax(dim=1).numpy(), (LABELS["NCR"], LABELS["ET"]))
                bias[torch.from_numpy(dilate(core, int(p["dilation"])))] = p["bias"]
            logits[:, self.channel] += bias
            return _to_case_grid(cache, logits)
        if cand.baseline == "morph_ring":
            ring = dilate(region_mask(cache.baseline_labels, "TC"), int(p["dilation"]))
            brain = np.asarray(getattr(cache.prepared, "brain_mask", np.ones_like(ring)), dtype=bool)
            out = cache.baseline_labels.copy()
            out[ring & brain & (out == 0)] = self.channel
            return out
        if cand.baseline == "histogram_match":
            slices = matched_slices(cache.prepared.slices, self.reference, float(p["strength"]))
            return _to_case_grid(cache, _forward(cache.model, slices))
        raise ValueError(f"unknown baseline {cand.baseline!r}")

    def protected_labels(self, item: VolumeItem, cand: Candidate | None) -> np.ndarray:
        """:meth:`labels` with the voxels of the unedited prediction's ``protect`` regions back at
        their unedited labels (as ``InterventionSpec.protect`` does for the latent specs)."""
        labels = self.labels(item, cand)
        if cand is None or not self.protect or labels is item.cache.baseline_labels:
            return labels
        return item.cache.protect(labels.copy(), range(labels.shape[2]), self.protect)

    def scores(self, item: VolumeItem, cand: Candidate | None) -> dict[str, float]:
        """Region Dice vs the label (``dice``), vs the unedited prediction (``own``), TC/ET/WT
        Dice, predicted region/TC voxel counts and SNFH volume (mL) of ``item`` under ``cand``
        (protected regions kept)."""
        key = (id(item), cand)
        if key not in self._scores:
            self._scores[key] = case_scores(item, self.protected_labels(item, cand), self.region)
        return self._scores[key]


def case_scores(item: VolumeItem, labels: np.ndarray, region: str) -> dict[str, float]:
    """The numbers :class:`BaselineEval` and :func:`side_effects` need for one label map."""
    voxel_ml = float(np.prod(item.spacing)) / 1000.0
    pred = region_mask(labels, region)
    out = {
        "own": dice(pred, region_mask(item.cache.baseline_labels, region)),
        "region_voxels": float(pred.sum()),
        "core_voxels": float(region_mask(labels, "TC").sum()),
        "SNFH_ml": float((labels == LABELS["SNFH"]).sum()) * voxel_ml,
    }
    if item.label is not None:
        out["dice"] = dice(pred, region_mask(item.label, region))
        out.update({r: dice(region_mask(labels, r), region_mask(item.label, r)) for r in SIDE_REGIONS})
        out["SNFH_ml_true"] = float((item.label == LABELS["SNFH"]).sum()) * voxel_ml
    return out


def side_effects(
    before: Sequence[dict[str, float]], after: Sequence[dict[str, float]]
) -> dict[str, float | None]:
    """Mean change (after - before) of TC/ET/WT Dice, SNFH mL and SNFH mL error over cases."""
    if not before:
        return {k: None for k in (*SIDE_REGIONS, "SNFH_ml", "SNFH_ml_error")}
    out: dict[str, float | None] = {}
    for r in SIDE_REGIONS:
        out[r] = float(np.mean([a[r] - b[r] for b, a in zip(before, after, strict=True)]))
    out["SNFH_ml"] = float(np.mean([a["SNFH_ml"] - b["SNFH_ml"] for b, a in zip(before, after, strict=True)]))
    err = [abs(a["SNFH_ml"] - a["SNFH_ml_true"]) - abs(b["SNFH_ml"] - b["SNFH_ml_true"])
           for b, a in zip(before, after, strict=True)]  # fmt: skip
    out["SNFH_ml_error"] = float(np.mean(err))
    return out


@torch.no_grad()
def _forward(model: Any, slices: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Logits ``(Z, 4, S, S)`` float32 on the CPU of the unedited network on ``slices``."""
    device = next(iter(model.parameters()), torch.empty(0)).device
    outs = [
        model(slices[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(slices), batch_size)
    ]
    return torch.cat(outs)


def _to_case_grid(cache: Any, logits: torch.Tensor) -> np.ndarray:
    from medseglens_core.interventions.cache import logits_to_labels

    return logits_to_labels(cache.prepared, logits)


@dataclass(frozen=True)
class Choice:
    """The parameter a rule picked for one baseline (None: no edit), per evaluated item for oracle."""

    default: Candidate | None
    per_item: dict[int, Candidate | None] | None = None

    def for_item(self, item: VolumeItem) -> Candidate | None:
        if self.per_item is not None:
            return self.per_item.get(id(item))
        return self.default


def core_change_bound(change: np.ndarray, n_se: float) -> np.ndarray:
    """``(specs, regions)``: the mean over cases of ``change`` ``(specs, cases, regions)`` less
    ``n_se`` standard errors of it (sample standard deviation / sqrt(cases); none with one case)."""
    n = change.shape[1]
    if n == 0:
        return np.zeros((change.shape[0], change.shape[2]))
    mean = change.mean(axis=1)
    if n < 2 or n_se == 0:
        return mean
    return mean - n_se * change.std(axis=1, ddof=1) / np.sqrt(n)


@dataclass(frozen=True)
class CoreGuard:
    """The blind protocols' core guard: the calibration target cases' mean TC/ET Dice change
    (the regions other than the scored one) less ``n_se`` standard errors >= ``-tolerance``."""

    tolerance: float = 0.02
    n_se: float = 1.0

    def keeps(self, change: np.ndarray) -> np.ndarray:
        """``(specs,)`` bool for ``change`` ``(specs, cases, regions)``."""
        return (core_change_bound(change, self.n_se) >= -self.tolerance).all(axis=1)


def guarded_regions(region: str) -> list[str]:
    """The regions the core guard watches when ``region`` is scored."""
    return [r for r in ("TC", "ET") if r != region]


def choose(
    ev: BaselineEval,
    cands: Sequence[Candidate],
    mode: Mode,
    *,
    calib_t: Sequence[VolumeItem],
    calib_s: Sequence[VolumeItem],
    evaluate: Sequence[VolumeItem],
    threshold: float,
    source_tolerance: float,
    source_case_tolerance: float,
    core_guard: CoreGuard | None = None,
) -> Choice:
    """Pick a baseline's parameter by the protocol's rule (module docs); ``core_guard``: the
    labelled rule's guard on the calibration target cases (None: none)."""
    if mode == "oracle":
        per: dict[int, Candidate | None] = {}
        for item in evaluate:
            base = ev.scores(item, None)["dice"]
            if base >= threshold:
                per[id(item)] = None
                continue
            best = max(cands, key=lambda c: ev.scores(item, c)["dice"])
            per[id(item)] = best if ev.scores(item, best)["dice"] > base else None
        return Choice(None, per)
    if mode == "labelled":
        src = [i for i in calib_s if i.label is not None]
        base = float(np.mean([ev.scores(i, None)["dice"] for i in calib_t]))
        regions = guarded_regions(ev.region)
        best, best_gain = None, base
        for c in cands:
            ch = [ev.scores(i, c)["dice"] - ev.scores(i, None)["dice"] for i in src] or [0.0]
            if np.mean(ch) < -source_tolerance or min(ch) < -source_case_tolerance:
                continue
            if core_guard is not None and regions:
                core = [[ev.scores(i, c)[r] - ev.scores(i, None)[r] for r in regions] for i in calib_t]
                if not core_guard.keeps(np.array([core]))[0]:
                    continue
            gain = float(np.mean([ev.scores(i, c)["dice"] for i in calib_t]))
            if gain > best_gain:
                best, best_gain = c, gain
        return Choice(best)

    def ratio(items: Sequence[VolumeItem], c: Candidate | None) -> float:
        return float(np.mean([ev.scores(i, c)["region_voxels"] / max(ev.scores(i, c)["core_voxels"], 1.0)
                              for i in items]))  # fmt: skip

    src_ratio = ratio(calib_s, None)
    ok = [
        c for c in cands if np.mean([ev.scores(i, c)["own"] for i in calib_s]) >= 1.0 - 5 * source_tolerance
    ]
    if not ok:
        return Choice(None)
    gap = lambda c: abs(np.log(max(ratio(calib_t, c), 1e-6) / max(src_ratio, 1e-6)))  # noqa: E731
    best = min(ok, key=gap)
    return Choice(best if gap(best) < gap(None) else None)


def run_baselines(
    items: dict[str, Sequence[VolumeItem]],
    mode: Mode,
    *,
    region: str,
    threshold: float,
    source_tolerance: float,
    source_case_tolerance: float,
    gate: Gate | None = None,
    sae: Any = None,
    gate_sae: Any = None,
    grid: BaselineGrid = BaselineGrid(),
    core_guard: CoreGuard | None = None,
    protect: Sequence[str] = (),
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every baseline, chosen by ``mode``, scored like the latent protocol (``core_guard``: the
    labelled rule's guard, as the latent protocol's).

    ``items``: ``calib_t`` / ``calib_s`` (calibration target / source cases), ``evaluate``
    (the protocol's evaluated target cases, labelled), ``source`` (all labelled source cases,
    for ``source_dice_change``), ``reference`` (unlabelled source scans for histogram matching).
    Returns ``{name: {recovered_fraction, n_recovered, n_failures, dice_before, dice_after,
    source_dice_change, side_effects, chosen}}``.
    """
    ref = source_quantiles(items.get("reference") or items["source"])
    ev = BaselineEval(region, ref, gate, sae, gate_sae, protect)
    out: dict[str, dict[str, Any]] = {}
    evaluate = list(items["evaluate"])
    source = [i for i in items["source"] if i.label is not None]
    for name, cands in candidates(grid).items():
        choice = choose(ev, cands, mode, calib_t=items["calib_t"], calib_s=items["calib_s"], evaluate=evaluate,
                        threshold=threshold, source_tolerance=source_tolerance,
                        source_case_tolerance=source_case_tolerance, core_guard=core_guard)  # fmt: skip
        before = [ev.scores(i, None) for i in evaluate]
        after = [ev.scores(i, choice.for_item(i)) for i in evaluate]
        fails = [(b, a) for b, a in zip(before, after, strict=True) if b["dice"] < threshold]
        n_rec = sum(a["dice"] >= threshold for _, a in fails)
        src_change = _source_change(ev, source, choice, evaluate, threshold)
        out[name] = {
            "recovered_fraction": n_rec / len(fails) if fails else None,
            "n_recovered": int(n_rec),
            "n_failures": len(fails),
            "dice_before": float(np.mean([b["dice"] for b, _ in fails])) if fails else None,
            "dice_after": float(np.mean([a["dice"] for _, a in fails])) if fails else None,
            "source_dice_change": src_change,
            "side_effects": side_effects(before, after),
            "chosen": (choice.default.name if choice.default else None)
            if choice.per_item is None
            else [c.name if c else None for c in map(choice.for_item, evaluate)],
            "gate": gate is not None,
            "core_guard": core_guard is not None and mode == "labelled",
            "protect": list(protect),
        }
        if progress is not None:
            progress({"stage": "baseline", "baseline": name, "recovered": f"{n_rec}/{len(fails)}"})
    return out


def _source_change(ev: BaselineEval, source: Sequence[VolumeItem], choice: Choice,
                   evaluate: Sequence[VolumeItem], threshold: float) -> float:  # fmt: skip
    """Mean region-Dice change on the labelled source cases under the chosen parameter; for a
    per-failure (oracle) choice the mean over the failures of their parameter's change (0 for
    a failure left unedited), as the oracle protocol reports it."""
    if not source:
        return 0.0

    def change(c: Candidate | None) -> float:
        if c is None:
            return 0.0
        return float(np.mean([ev.scores(i, c)["dice"] - ev.scores(i, None)["dice"] for i in source]))

    if choice.per_item is None:
        return change(choice.default)
    fails = [i for i in evaluate if ev.scores(i, None)["dice"] < threshold]
    return float(np.mean([change(choice.for_item(i)) for i in fails])) if fails else 0.0


def grid_json(grid: BaselineGrid) -> dict[str, Any]:
    """The grid as JSON (recorded in recovery.json)."""
    return asdict(grid)
