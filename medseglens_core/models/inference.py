"""Volume inference: a case on any grid in, a label map on the same RAS grid out.

The chain is :func:`~medseglens_core.data.preprocess.prepare_case` (crop, pad, resample,
z-score), the model on slice batches under ``torch.inference_mode``, softmax, and
:meth:`PreparedCase.to_case_grid` back to the case grid. Voxels outside the brain mask are
background. ``io.write_label_map(labels, case.geometry, path)`` then restores the input file's
own grid and affine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from medseglens_core.data.preprocess import PreparedCase, prepare_case
from medseglens_core.errors import InvalidInput
from medseglens_core.models.base import SegModel


@dataclass(frozen=True)
class Segmentation:
    """A model's segmentation of one case.

    Attributes:
        labels: ``(X, Y, Z)`` uint8 on the case's RAS grid, BraTS 2023 labels 0..3.
        probs: ``(4, X, Y, Z)`` float32 class probabilities on the case grid, or None.
        prepared: the preprocessed case (slices and the record that inverts them; its ``labels``
            are None: inference does not resample the case's reference labels).
    """

    labels: np.ndarray
    probs: np.ndarray | None
    prepared: PreparedCase


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; other strings pass to :class:`torch.device`."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise InvalidInput(f"unknown device {device!r}; use 'auto', 'cpu' or 'cuda[:N]'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InvalidInput(f"device {device!r} asked for but CUDA is not available; use 'auto' or 'cpu'")
    return dev


def predict_slices(
    model: SegModel,
    slices: torch.Tensor,
    *,
    batch_size: int = 16,
    fn: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Softmax probabilities ``(Z, 4, S, S)`` float32 on the CPU for slices ``(Z, 4, S, S)``.

    Runs ``fn`` (default: ``model``) on batches of ``batch_size`` slices on the model's device,
    in eval mode under ``torch.inference_mode``.
    """
    if batch_size < 1:
        raise InvalidInput(f"batch_size must be >= 1, got {batch_size}")
    fn = fn or model
    device = next(model.parameters()).device
    model.eval()
    out = torch.empty((slices.shape[0], model.cfg.num_classes, *slices.shape[-2:]), dtype=torch.float32)
    with torch.inference_mode():
        for start in range(0, slices.shape[0], batch_size):
            batch = slices[start : start + batch_size].to(device=device, dtype=torch.float32)
            out[start : start + batch.shape[0]] = torch.softmax(fn(batch).float(), dim=1).cpu()
    return out


def probs_to_labels(prepared: PreparedCase, probs: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Map slice probabilities ``(Z', 4, S, S)`` to (labels ``(X,Y,Z)`` uint8, probs ``(4,X,Y,Z)``).

    Outside the crop the probability is 1 for background; outside the brain mask the label is 0.
    """
    grid = prepared.to_case_grid(probs, fill=0.0)
    x0, x1, y0, y1, z0, z1 = prepared.record.crop
    outside = np.ones(grid.shape[1:], dtype=bool)
    outside[x0:x1, y0:y1, z0:z1] = False
    grid[0][outside] = 1.0
    labels = grid.argmax(axis=0).astype(np.uint8)
    labels[~prepared.brain_mask] = 0
    return labels, grid


def segment_case(
    model: SegModel,
    case,
    *,
    device: str | torch.device = "auto",
    batch_size: int = 16,
    return_probs: bool = False,
) -> Segmentation:
    """Segment ``case`` (:class:`~medseglens_core.io.case.Case`) with a 2-D slice model.

    Args:
        model: a trained :class:`SegModel`; it is moved to ``device`` and put in eval mode.
        case: image ``(4, X, Y, Z)`` RAS, any spacing.
        device: "auto" (CUDA when available), "cpu", "cuda", ...
        batch_size: slices per forward call.
        return_probs: also return the ``(4, X, Y, Z)`` class probabilities.
    """
    model.to(resolve_device(device))
    prepared = prepare_case(case, model.cfg.input_size, with_labels=False)
    probs = predict_slices(model, prepared.slices, batch_size=batch_size)
    if not return_probs:  # the same labels without the (4, X, Y, Z) float grid
        return Segmentation(labels=prepared.argmax_to_case_grid(probs), probs=None, prepared=prepared)
    labels, grid = probs_to_labels(prepared, probs)
    return Segmentation(labels=labels, probs=grid, prepared=prepared)
