"""BraTS segmentation metrics: Dice, HD95 (mm), per label and per region, and region volumes.

Conventions (BraTS 2023 labels: 0 background, 1 NCR, 2 SNFH, 3 ET):

- Labels: NCR = {1}, SNFH = {2}, ET = {3}. Regions: WT = {1, 2, 3}, TC = {1, 3}, ET = {3}.
- ``dice``: both masks empty -> 1.0 (nothing to find, nothing found); one empty -> 0.0.
- ``hd95``: both empty -> 0.0 mm; exactly one empty -> :data:`HD95_EMPTY` mm.
- HD95 is the symmetric 95th-percentile Hausdorff distance as in MONAI
  (``compute_hausdorff_distance(percentile=95)``), MedPy (``hd95``) and the BraTS evaluation:
  the surface of a mask is its voxels with a face neighbour outside the mask (voxels on the
  array border count as surface); for each surface voxel of one mask the Euclidean distance
  (in mm, with the voxel spacing) to the nearest surface voxel of the other mask; HD95 is the
  larger of the two directed 95th percentiles (linear interpolation, ``np.percentile``).

Speed: everything is computed inside the bounding box of ``pred | gt`` plus one voxel, which
gives exactly the full-volume result (all surface voxels of both masks lie inside it) at a
fraction of the cost.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from medseglens_core.errors import InvalidInput

__all__ = ["HD95_EMPTY", "LABELS", "REGIONS", "dice", "hd95", "region_volumes_ml", "score_segmentation"]

LABELS: dict[str, int] = {"NCR": 1, "SNFH": 2, "ET": 3}
REGIONS: dict[str, tuple[int, ...]] = {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}

#: HD95 (mm) when exactly one of prediction and ground truth is empty: the diagonal of the BraTS
#: 240 x 240 x 155 grid at 1 mm, sqrt(240**2 + 240**2 + 155**2) = 373.13 mm, i.e. the largest
#: distance two voxels of a BraTS volume can be apart (the BraTS 2023 lesion-wise evaluation
#: assigns a similar 374 mm to a missed or spurious lesion).
HD95_EMPTY: float = float(np.sqrt(240.0**2 + 240.0**2 + 155.0**2))

_FACES = ndimage.generate_binary_structure(3, 1)


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice overlap 2|P & G| / (|P| + |G|) of two boolean masks of equal shape.

    Returns 1.0 when both are empty, 0.0 when exactly one is.
    """
    pred, gt = _masks(pred, gt)
    n_pred, n_gt = int(np.count_nonzero(pred)), int(np.count_nonzero(gt))
    if n_pred + n_gt == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(pred & gt)) / (n_pred + n_gt)


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float]) -> float:
    """Symmetric 95th-percentile Hausdorff distance in mm between two 3-D boolean masks.

    Args:
        pred, gt: boolean masks (X, Y, Z) of equal shape.
        spacing: voxel size in mm per axis, in the arrays' axis order.

    Returns 0.0 when both masks are empty and :data:`HD95_EMPTY` when exactly one is.
    """
    pred, gt = _masks(pred, gt)
    sampling = _spacing(spacing, pred.ndim)
    has_pred, has_gt = bool(pred.any()), bool(gt.any())
    if not has_pred and not has_gt:
        return 0.0
    if has_pred != has_gt:
        return HD95_EMPTY
    box = _bbox(pred | gt, margin=1)
    pred, gt = _pad_crop(pred, box), _pad_crop(gt, box)
    surf_pred, surf_gt = _surface(pred), _surface(gt)
    d_pred_gt = ndimage.distance_transform_edt(~surf_gt, sampling=sampling)[surf_pred]
    d_gt_pred = ndimage.distance_transform_edt(~surf_pred, sampling=sampling)[surf_gt]
    return float(max(np.percentile(d_pred_gt, 95), np.percentile(d_gt_pred, 95)))


def score_segmentation(
    pred_labels: np.ndarray, gt_labels: np.ndarray, spacing: Sequence[float]
) -> dict[str, dict[str, dict[str, float]]]:
    """Dice and HD95 per label (NCR, SNFH, ET) and per region (WT, TC, ET).

    Args:
        pred_labels, gt_labels: integer label maps (X, Y, Z) of equal shape, BraTS 2023 values.
        spacing: voxel size in mm per axis.

    Returns:
        ``{"labels": {"NCR": {"dice": d, "hd95": mm}, "SNFH": ..., "ET": ...},
        "regions": {"WT": ..., "TC": ..., "ET": ...}}``.
    """
    pred_labels, gt_labels = np.asarray(pred_labels), np.asarray(gt_labels)
    if pred_labels.shape != gt_labels.shape:
        raise InvalidInput(
            f"Prediction {pred_labels.shape} and ground truth {gt_labels.shape} differ in shape; "
            "score them on one grid."
        )
    fg = (pred_labels > 0) | (gt_labels > 0)
    if fg.any():  # crop once; metrics inside the box equal the full-volume ones
        box = _bbox(fg, margin=1)
        pred_labels, gt_labels = _pad_crop(pred_labels, box), _pad_crop(gt_labels, box)
    out: dict[str, dict[str, dict[str, float]]] = {"labels": {}, "regions": {}}
    for group, table in (("labels", {k: (v,) for k, v in LABELS.items()}), ("regions", REGIONS)):
        for name, values in table.items():
            p, g = np.isin(pred_labels, values), np.isin(gt_labels, values)
            out[group][name] = {"dice": dice(p, g), "hd95": hd95(p, g, spacing)}
    return out


def region_volumes_ml(labels: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Volumes in millilitres of WT, TC, ET, NCR and SNFH in an integer label map (X, Y, Z)."""
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iub" or (labels.size and labels.min() < 0):
        raise InvalidInput(f"A label map must hold non-negative integers; got dtype {labels.dtype}.")
    voxel_ml = float(np.prod(_spacing(spacing, labels.ndim))) / 1000.0
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=4)
    n = {v: int(counts[v]) for v in (1, 2, 3)}
    vols = {name: sum(n[v] for v in values) * voxel_ml for name, values in REGIONS.items()}
    vols.update({name: n[v] * voxel_ml for name, v in LABELS.items() if name not in vols})
    return {k: vols[k] for k in ("WT", "TC", "ET", "NCR", "SNFH")}


def _masks(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred, gt = np.asarray(pred, dtype=bool), np.asarray(gt, dtype=bool)
    if pred.shape != gt.shape:
        raise InvalidInput(f"Masks differ in shape: {pred.shape} vs {gt.shape}; compare them on one grid.")
    return pred, gt


def _spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    sp = tuple(float(s) for s in spacing)
    if len(sp) != ndim or not all(np.isfinite(s) and s > 0 for s in sp):
        raise InvalidInput(f"spacing {sp} must give {ndim} positive voxel sizes in mm.")
    return sp


def _bbox(mask: np.ndarray, margin: int) -> tuple[tuple[int, int], ...]:
    """Per axis, (start, stop) of the mask's bounding box grown by ``margin`` (may leave the array)."""
    box = []
    for axis in range(mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(mask.any(axis=others))
        box.append((int(idx[0]) - margin, int(idx[-1]) + 1 + margin))
    return tuple(box)


def _pad_crop(arr: np.ndarray, box: tuple[tuple[int, int], ...]) -> np.ndarray:
    """``arr`` cut to ``box``; parts of the box outside the array are zero (background)."""
    inner = tuple(slice(max(a, 0), min(b, n)) for (a, b), n in zip(box, arr.shape, strict=True))
    pad = [(max(-a, 0), max(b - n, 0)) for (a, b), n in zip(box, arr.shape, strict=True)]
    out = arr[inner]
    return np.pad(out, pad) if any(p != (0, 0) for p in pad) else out


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, structure=_FACES, border_value=0)
