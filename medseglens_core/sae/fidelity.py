"""Segmentation fidelity of an SAE splice: does the network still segment from x_hat?

For each held-out case the prefix of the model runs ONCE per batch of preprocessed slices and
the suffix twice: original ``run_suffix(p, p.h)`` (bit for bit the plain forward) and spliced
``run_suffix(p, sae(p.h tokens))`` (the SAE reconstruction replaces the activation; NO error
term); both are mapped to labels on the case grid exactly as ``models.inference.segment_case``
does. Reported per region
(WT, TC, ET; BraTS 2023 labels), each a mean over cases:

- ``splice_vs_original``: Dice(spliced prediction, original prediction);
- ``gt_original`` / ``gt_spliced``: Dice against the case's ground truth (labelled cases only).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseglens_core.sae.base import SAE

__all__ = ["splice_fidelity", "spliced_forward"]


def spliced_forward(model: Any, sae: SAE, hook: str, x: torch.Tensor) -> torch.Tensor:
    """Logits ``(B, 4, H, W)`` of ``x (B, 4, H, W)`` with the hook activation replaced by ``sae(h)``."""
    p = model.run_prefix(x, hook)
    b, c, hh, ww = p.h.shape
    tokens = p.h.permute(0, 2, 3, 1).reshape(-1, c)
    h_hat = sae(tokens.float()).to(p.h.dtype).reshape(b, hh, ww, c).permute(0, 3, 1, 2).contiguous()
    return model.run_suffix(p, h_hat)


def _predict_both(
    model: Any, sae: SAE, hook: str, slices: torch.Tensor, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax probabilities ``(Z, 4, S, S)`` float32 CPU, original and spliced, one prefix pass."""
    device = next(model.parameters()).device
    shape = (slices.shape[0], model.cfg.num_classes, *slices.shape[-2:])
    orig, spliced = torch.empty(shape), torch.empty(shape)
    with torch.inference_mode():
        for start in range(0, slices.shape[0], batch_size):
            x = slices[start : start + batch_size].to(device=device, dtype=torch.float32)
            p = model.run_prefix(x, hook)
            b, c, hh, ww = p.h.shape
            tokens = p.h.permute(0, 2, 3, 1).reshape(-1, c).float()
            h_hat = sae(tokens).to(p.h.dtype).reshape(b, hh, ww, c).permute(0, 3, 1, 2).contiguous()
            end = start + x.shape[0]
            orig[start:end] = torch.softmax(model.run_suffix(p, p.h).float(), dim=1).cpu()
            spliced[start:end] = torch.softmax(model.run_suffix(p, h_hat).float(), dim=1).cpu()
    return orig, spliced


def _region_dice(pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    from medseglens_core.metrics.brats import REGIONS, dice

    return {r: dice(np.isin(pred, labs), np.isin(ref, labs)) for r, labs in REGIONS.items()}


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in rows])) for k in rows[0]} if rows else {}


@torch.no_grad()
def splice_fidelity(
    model: Any,
    sae: SAE,
    hook: str,
    case_dirs: Sequence[str | Path],
    *,
    cohorts: Sequence[str | None] | None = None,
    batch_size: int = 16,
) -> dict[str, Any]:
    """Fidelity metrics (see module doc) over ``case_dirs``; model and SAE on the same device.

    Returns ``{"n_cases", "splice_vs_original": {WT, TC, ET}, "gt_original": {...},
    "gt_spliced": {...}, "per_case": [{case_id, cohort, splice_vs_original, gt_original?,
    gt_spliced?}]}``.
    """
    from medseglens_core.data.preprocess import prepare_case
    from medseglens_core.io import load_case

    model.eval()
    sae.eval()
    per_case: list[dict[str, Any]] = []
    for i, case_dir in enumerate(case_dirs):
        case = load_case(case_dir, cohort=None if cohorts is None else cohorts[i])
        prep = prepare_case(case, model.cfg.input_size)
        p_orig, p_spliced = _predict_both(model, sae, hook, prep.slices, batch_size)
        orig = prep.argmax_to_case_grid(p_orig)
        spliced = prep.argmax_to_case_grid(p_spliced)
        row: dict[str, Any] = {
            "case_id": case.case_id,
            "cohort": case.cohort,
            "splice_vs_original": _region_dice(spliced, orig),
        }
        if case.label is not None:
            row["gt_original"] = _region_dice(orig, case.label)
            row["gt_spliced"] = _region_dice(spliced, case.label)
        per_case.append(row)
    labelled = [r for r in per_case if "gt_original" in r]
    return {
        "n_cases": len(per_case),
        "splice_vs_original": _mean([r["splice_vs_original"] for r in per_case]),
        "gt_original": _mean([r["gt_original"] for r in labelled]),
        "gt_spliced": _mean([r["gt_spliced"] for r in labelled]),
        "per_case": per_case,
    }
