"""Activation collection: run a segmentation model over case folders and shard hook tokens.

For each case: ``io.load_case`` -> ``data.preprocess.prepare_case(case, input_size)`` ->
``model.run_prefix(slices, hook).h`` ``(Z', C, h, w)``. Each spatial position of each slice is
one token ``h.permute(0, 2, 3, 1).reshape(-1, C)``. Only positions inside the brain are kept:
the preprocessed brain (any non-zero input channel; preprocessing zeroes everything outside the
brain mask) is area-averaged to the hook's ``(h, w)`` grid and a position counts as brain when
at least half its area is brain.

Provenance per token (see :mod:`medseglens_core.sae.shards`): case index (-> case id and cohort
in the manifest), ``z`` = the case-grid axial slice index, ``y``/``x`` = row/column on the
hook's ``(h, w)`` grid of the model's slice frame (rows follow the RAS x axis of the cropped,
padded, resampled slice, columns its y axis), and ``label`` = the majority BraTS label over the
token's footprint (area-averaged one-hot, ties to the lower label), 0 for unlabelled cases.

``background_keep`` (default 1.0) is the fraction of label-0 tokens kept, drawn at random
(seeded); every tumour token (label 1, 2 or 3) is kept. Unlabelled cases count as all
background, so the fraction applies to healthy scans too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medseglens_core.errors import InvalidInput
from medseglens_core.sae.shards import ActivationShards, ShardWriter

__all__ = ["collect_activations", "token_grid_labels"]


def token_grid_labels(
    slices: torch.Tensor, labels: torch.Tensor | None, hw: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Brain mask ``(Z', h, w)`` bool and majority labels ``(Z', h, w)`` uint8 on the hook grid.

    ``slices (Z', 4, S, S)`` preprocessed input; ``labels (Z', S, S)`` or None.
    """
    brain = (slices != 0).any(dim=1, keepdim=True).float()
    brain_hw = F.adaptive_avg_pool2d(brain, hw)[:, 0] >= 0.5
    if labels is None:
        return brain_hw, torch.zeros(brain_hw.shape, dtype=torch.uint8)
    onehot = F.one_hot(labels.long(), 4).permute(0, 3, 1, 2).float()
    frac = F.adaptive_avg_pool2d(onehot, hw)
    return brain_hw, frac.argmax(dim=1).to(torch.uint8)


@torch.no_grad()
def collect_activations(
    model: Any,
    hook: str,
    case_dirs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    cohorts: Sequence[str | None] | None = None,
    background_keep: float = 1.0,
    seed: int = 0,
    batch_size: int = 16,
    dtype: str = "float16",
    shard_tokens: int = 65_536,
    model_id: str | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> ActivationShards:
    """Collect hook tokens of ``model`` over ``case_dirs`` into shards under ``out_dir``.

    Args:
        model: a :class:`~medseglens_core.models.base.SegModel` (eval mode, on its device).
        hook: one of ``model.hook_points``.
        case_dirs: case folders readable by ``io.load_case``.
        cohorts: one cohort name per case (or None to take the loader's).
        background_keep: fraction in [0, 1] of background tokens kept (see module doc).
        dtype: stored token dtype (``float16`` halves disk and reading time; ``float32``).
        progress: called after each case with ``{case, done, total, tokens}``.
        should_stop: polled between cases; True ends collection early (what was written stays).

    Returns the shard reader; memory stays bounded by one case plus one shard.
    """
    from medseglens_core.data.preprocess import prepare_case
    from medseglens_core.io import load_case

    if not 0.0 <= background_keep <= 1.0:
        raise InvalidInput(f"background_keep must be in [0, 1], got {background_keep}")
    if cohorts is not None and len(cohorts) != len(case_dirs):
        raise InvalidInput(f"got {len(cohorts)} cohorts for {len(case_dirs)} case folders; give one per case")
    model.check_hook(hook)
    model.eval()
    device = next(model.parameters()).device
    rng = np.random.default_rng(seed)
    meta = {
        "model_id": model_id,
        "hook": hook,
        "arch": model.arch,
        "background_keep": background_keep,
        "input_size": model.cfg.input_size,
        "seed": seed,
    }
    writer: ShardWriter | None = None
    for i, case_dir in enumerate(case_dirs):
        if should_stop is not None and should_stop():
            break
        case = load_case(case_dir, cohort=None if cohorts is None else cohorts[i])
        prep = prepare_case(case, model.cfg.input_size)
        for start in range(0, prep.slices.shape[0], batch_size):
            x = prep.slices[start : start + batch_size]
            h = model.run_prefix(x.to(device), hook).h.float().cpu()
            if writer is None:
                writer = ShardWriter(out_dir, h.shape[1], shard_tokens=shard_tokens, dtype=dtype, meta=meta)
                meta["grid"] = list(h.shape[-2:])
            if start == 0:
                idx = writer.add_case(case.case_id, case.cohort)
            lab = None if prep.labels is None else prep.labels[start : start + batch_size]
            brain, labels = token_grid_labels(x, lab, tuple(h.shape[-2:]))
            keep = brain & ((labels > 0) | torch.from_numpy(rng.random(brain.shape) < background_keep))
            zz, yy, xx = keep.nonzero(as_tuple=True)
            if zz.numel() == 0:
                continue
            tokens = h.permute(0, 2, 3, 1)[zz, yy, xx]
            z_case = torch.as_tensor(list(prep.z_indices))[start + zz]
            writer.add(
                tokens.numpy(),
                case=idx,
                z=z_case.numpy(),
                y=yy.numpy(),
                x=xx.numpy(),
                label=labels[zz, yy, xx].numpy(),
            )
        if progress is not None:
            progress(
                {
                    "case": case.case_id,
                    "done": i + 1,
                    "total": len(case_dirs),
                    "tokens": sum(c["n_tokens"] for c in writer.cases),
                }
            )
    if writer is None:
        raise InvalidInput("no case folders were given (or collection was stopped before the first)")
    return writer.close()
