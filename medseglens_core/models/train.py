"""Training a 2-D segmentation model on prepared slices, with validation on whole volumes.

DiceCE loss (softmax, one-hot targets, batch Dice), AdamW, linear warm-up then cosine decay,
tumour-balanced slice sampling, light augmentation, bf16 autocast on CUDA. Training is budgeted
in optimiser steps only, and the schedule runs on ``step / steps``, so the same config and seed
give byte-identical weights on the same machine kind (the run is seeded and runs inside
:func:`medseglens_core.determinism.deterministic`: fixed thread count, deterministic algorithms).
``time_budget_s`` is only a safety limit: a run past it stops with :class:`TrainingTimeLimit`
and saves nothing. Validation runs the volume inference
path on held-out cases and scores Dice per cohort and region (WT, TC, ET and the SNFH label);
the checkpoint with the best mean WT + SNFH Dice is kept.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseglens_core.data.preprocess import PreparedCase, prepare_case
from medseglens_core.data.slices import SliceDataset, augment
from medseglens_core.determinism import TRAIN_THREADS, deterministic
from medseglens_core.errors import InvalidInput, NotFound
from medseglens_core.models.base import SegModel, build_model
from medseglens_core.models.inference import predict_slices, resolve_device

SCORED = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,), "SNFH": (2,)}


@dataclass(frozen=True)
class TrainConfig:
    """Training hyper-parameters.

    Attributes:
        arch: "segformer" or "unet".
        model: architecture config (e.g. ``{"input_size": 96}``); defaults per architecture.
        steps: optimiser steps (default 1500): the budget and the schedule's length.
        time_budget_s: wall-clock safety limit in seconds for the whole run incl. validation
            (None: none). Exceeding it aborts with :class:`TrainingTimeLimit`; it never shortens
            the run, so it cannot make two runs differ.
        batch_size: slices per step (default 16).
        lr: peak learning rate (default 2e-3); weight_decay: AdamW decay (1e-4).
        warmup_frac: fraction of the budget spent on linear warm-up (0.05).
        tumour_fraction: share of each batch drawn from tumour slices (0.6).
        val_every: steps between validations (default 100; also validates at the end).
        augment: flips and intensity scale/shift (default True).
        seed: seeds weights, sampling and augmentation.
        device: "auto" (CUDA when available), "cpu", "cuda".
        num_threads: torch intra-op CPU threads during the run, restored afterwards (default
            :data:`~medseglens_core.determinism.TRAIN_THREADS`, 1). The bits of the weights depend
            on it (CPU reductions split by thread); on a busy machine 1 thread is as fast as 2.
    """

    arch: str = "unet"
    model: dict[str, Any] = field(default_factory=dict)
    steps: int = 1500
    time_budget_s: float | None = None
    batch_size: int = 16
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_frac: float = 0.05
    tumour_fraction: float = 0.6
    val_every: int = 100
    augment: bool = True
    seed: int = 0
    device: str = "auto"
    num_threads: int = TRAIN_THREADS


class TrainingTimeLimit(InvalidInput):
    """A training run went past its wall-clock safety limit (``time_budget_s``)."""


@dataclass
class TrainResult:
    """Output of :func:`train_on_cases`.

    Attributes:
        model: the best checkpoint, in eval mode, on the CPU.
        card: card fields for :func:`~medseglens_core.models.card.save_model` (training, validation).
        history: one dict per validation: step, loss, lr, score, dice.
    """

    model: SegModel
    card: dict[str, Any]
    history: list[dict[str, Any]]


def lr_factor(frac: float, warmup_frac: float, floor: float = 0.02) -> float:
    """Learning-rate multiplier at budget fraction ``frac`` in [0, 1]: warm-up then cosine to ``floor``."""
    if frac < warmup_frac:
        return max(frac / warmup_frac, floor)
    t = min((frac - warmup_frac) / max(1.0 - warmup_frac, 1e-8), 1.0)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t))


def region_dice(pred: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    """Dice of WT, TC, ET and the SNFH label between label maps (both empty -> 1.0)."""
    from medseglens_core.metrics import dice

    return {name: dice(np.isin(pred, labels), np.isin(gt, labels)) for name, labels in SCORED.items()}


@dataclass(frozen=True)
class _ValCase:
    case_id: str
    cohort: str
    prepared: PreparedCase
    label: np.ndarray


def _validate(model: SegModel, val: Sequence[_ValCase]) -> dict[str, dict[str, float]]:
    """Mean Dice per cohort and region, plus ``"all"`` over every validation case."""
    per_cohort: dict[str, list[dict[str, float]]] = {}
    for vc in val:
        probs = predict_slices(model, vc.prepared.slices, batch_size=32)
        labels = vc.prepared.argmax_to_case_grid(probs)
        scores = region_dice(labels, vc.label)
        per_cohort.setdefault(vc.cohort, []).append(scores)
        per_cohort.setdefault("all", []).append(scores)
    return {
        cohort: {r: float(np.mean([s[r] for s in rows])) for r in SCORED} | {"n_cases": len(rows)}
        for cohort, rows in per_cohort.items()
    }


def evaluate_cases(model: SegModel, cases: Sequence, *, device: str = "auto") -> dict[str, dict[str, float]]:
    """Mean Dice per cohort (``case.cohort``) and region (WT, TC, ET, SNFH) over labelled cases.

    Also returns ``"all"`` over every case; each entry holds ``n_cases``.
    """
    model.to(resolve_device(device))
    size = model.cfg.input_size
    val = [
        _ValCase(c.case_id, c.cohort or "unknown", prepare_case(c, size), np.asarray(c.label))
        for c in cases
        if c.label is not None
    ]
    return _validate(model, val)


def _score(dice: dict[str, dict[str, float]]) -> float:
    return dice["all"]["WT"] + dice["all"]["SNFH"] if "all" in dice else 0.0


def train_on_cases(
    cfg: TrainConfig,
    train_cases: Sequence,
    val_cases: Sequence = (),
    *,
    progress: Callable[[dict[str, Any]], None] | None = None,
    progress_bar: bool = False,
) -> TrainResult:
    """Train a fresh ``cfg.arch`` model on labelled :class:`~medseglens_core.io.case.Case` objects.

    Args:
        cfg: hyper-parameters and budget.
        train_cases: labelled cases (their ``cohort`` is recorded on the card).
        val_cases: held-out labelled cases, scored with the volume path; without them the
            last step's weights are kept.
        progress: called with a dict (step, loss, lr, elapsed_s and, after validation, dice).
        progress_bar: show a tqdm bar with loss and validation Dice (off in library use).
    """
    if cfg.steps < 1:
        raise InvalidInput(f"steps must be >= 1, got {cfg.steps}")
    if cfg.num_threads < 1:
        raise InvalidInput(f"num_threads must be >= 1, got {cfg.num_threads}")
    with deterministic(cfg.num_threads):
        torch.manual_seed(cfg.seed)
        device = resolve_device(cfg.device)
        model = build_model(cfg.arch, **cfg.model).to(device)
        size = model.cfg.input_size
        data = SliceDataset.from_cases(train_cases, size)
        val = [
            _ValCase(c.case_id, c.cohort or "unknown", prepare_case(c, size), np.asarray(c.label))
            for c in val_cases
            if c.label is not None
        ]
        loop = _Loop(cfg, model, device, data, val, progress, progress_bar)
        history, best = loop.run()
    model.load_state_dict(best["state"])
    model.to("cpu").eval()
    card = {
        "training": {
            "cohorts": sorted({c for c in data.cohorts if c}),
            "case_ids": list(data.case_ids),
            "val_case_ids": [v.case_id for v in val],
            "n_slices": len(data),
            "steps": loop.step,
            "best_step": best["step"],
            "config": asdict(cfg),
            "seed": cfg.seed,
            "threads": cfg.num_threads,
            "torch_version": torch.__version__,
            "time_s": round(loop.elapsed, 1),
            "device": str(device),
        },
        "validation_dice": best["dice"],
        "training_time_s": round(loop.elapsed, 1),
    }
    return TrainResult(model=model, card=card, history=history)


class _Loop:
    """The optimisation loop; holds its state so train_on_cases stays short."""

    def __init__(self, cfg, model, device, data, val, progress, progress_bar) -> None:
        from monai.losses import DiceCELoss

        self.cfg, self.model, self.device, self.data, self.val = cfg, model, device, data, val
        self.progress, self.progress_bar = progress, progress_bar
        self.loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, batch=True)
        self.opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.step, self.elapsed, self.t0 = 0, 0.0, 0.0

    def _frac(self) -> float:
        return min(self.step / self.cfg.steps, 1.0)

    def _check_time(self) -> None:
        limit = self.cfg.time_budget_s
        if limit and time.perf_counter() - self.t0 > limit:
            raise TrainingTimeLimit(
                f"training stopped at step {self.step} of {self.cfg.steps}: past the wall-clock limit "
                f"of {limit:g} s; nothing was saved. Raise the limit or lower --steps "
                "(the step budget, not the clock, decides the weights)"
            )

    def train_step(self) -> float:
        cfg = self.cfg
        x, y = self.data.sample(cfg.batch_size, self.gen, cfg.tumour_fraction)
        if cfg.augment:
            x, y = augment(x, y, self.gen)
        x, y = x.to(self.device), y.to(self.device)
        for group in self.opt.param_groups:
            group["lr"] = cfg.lr * lr_factor(self._frac(), cfg.warmup_frac)
        self.model.train()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            logits = self.model(x)
        loss = self.loss_fn(logits.float(), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        return float(loss.detach())

    def run(self) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        from tqdm.auto import tqdm

        bar = tqdm(total=self.cfg.steps, disable=not self.progress_bar, desc=f"train {self.cfg.arch}")
        history: list[dict[str, Any]] = []
        best: dict[str, Any] = {"score": -1.0, "step": 0, "dice": {}, "state": None}
        self.t0 = time.perf_counter()
        losses: list[float] = []
        while self.step < self.cfg.steps:
            self._check_time()
            losses.append(self.train_step())
            self.step += 1
            self.elapsed = time.perf_counter() - self.t0
            bar.update(1)
            done = self.step >= self.cfg.steps
            if self.step % self.cfg.val_every == 0 or done:
                event = self._checkpoint(float(np.mean(losses[-self.cfg.val_every :])), best)
                history.append(event)
                bar.set_postfix(loss=f"{event['loss']:.3f}", wt=f"{event.get('val_wt', float('nan')):.3f}")
            elif self.step % 10 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}")
                if self.progress:
                    self.progress(
                        {"step": self.step, "loss": float(np.mean(losses[-10:])), "elapsed_s": self.elapsed}
                    )
        bar.close()
        self.elapsed = time.perf_counter() - self.t0
        return history, best

    def _checkpoint(self, loss: float, best: dict[str, Any]) -> dict[str, Any]:
        event: dict[str, Any] = {"step": self.step, "loss": loss, "lr": self.opt.param_groups[0]["lr"]}
        if self.val:
            dice = _validate(self.model, self.val)
            event |= {"dice": dice, "val_wt": dice["all"]["WT"], "val_snfh": dice["all"]["SNFH"]}
            score = _score(dice)
        else:
            dice, score = {}, float(self.step)  # no validation: keep the latest weights
        if score > best["score"]:
            state = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
            best.update(score=score, step=self.step, dice=dice, state=copy.deepcopy(state))
        event["elapsed_s"] = time.perf_counter() - self.t0
        if self.progress:
            self.progress(event)
        return event


def split_dirs(data_dir: str | Path, cohort: str, val_every: int = 5) -> tuple[list[Path], list[Path]]:
    """Train and validation case folders of ``data_dir/cohort``.

    With ``train/`` and ``val/`` sub-folders, their cases; otherwise the sorted case folders are
    split deterministically by case: every ``val_every``-th case (index % val_every ==
    val_every - 1) is held out, at least one when there are two or more cases.
    """
    from medseglens_core.io import find_cases

    root = Path(data_dir) / cohort
    if not root.is_dir():
        raise NotFound(f"no folder {root}; --data must hold one sub-folder per cohort")
    if (root / "train").is_dir():
        val = find_cases(root / "val") if (root / "val").is_dir() else []
        return find_cases(root / "train"), val
    cases = find_cases(root)
    val = [c for i, c in enumerate(cases) if i % val_every == val_every - 1]
    if not val and len(cases) >= 2:
        val = [cases[-1]]
    return [c for c in cases if c not in val], val


def train_model(
    cfg: TrainConfig,
    data_dir: str | Path,
    cohorts: Sequence[str],
    out_dir: str | Path,
    *,
    model_id: str | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    progress_bar: bool = False,
) -> dict[str, Any]:
    """Train on ``data_dir/<cohort>`` case folders and save ``out_dir/{weights.safetensors, card.json}``.

    Returns the saved card (id defaults to ``out_dir``'s name).
    """
    from medseglens_core.io import load_case
    from medseglens_core.models.card import save_model

    train, val = [], []
    for cohort in cohorts:
        tr_dirs, va_dirs = split_dirs(data_dir, cohort)
        train += [load_case(d, cohort=cohort) for d in tr_dirs]
        val += [load_case(d, cohort=cohort) for d in va_dirs]
    result = train_on_cases(cfg, train, val, progress=progress, progress_bar=progress_bar)
    card = {"id": model_id or Path(out_dir).name, **result.card, "history": result.history}
    for event in card["history"]:
        event.pop("dice", None)
    return save_model(result.model, card, out_dir)
