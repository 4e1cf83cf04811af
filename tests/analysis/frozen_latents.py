"""Frozen copy of ``analysis.latents.summarise_latents`` before the cell-table rewrite (commit f5361f8).

Used only by the equivalence test: it upsamples every selected latent to the case grid and
measures it voxel by voxel, exactly as the module docstring defines the statistics.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medseglens_core.analysis.encode import encode_maps
from medseglens_core.analysis.latents import LatentStat

LABEL_NAMES = {1: "NCR", 2: "SNFH", 3: "ET"}


def input_brain_mask(slices: torch.Tensor) -> torch.Tensor:
    return slices.abs().sum(dim=1) > 0


def labels_to_slice_grid(prepared: Any, labels: np.ndarray) -> torch.Tensor:
    """Case-grid labels ``(X, Y, Z)`` -> ``(Z', S, S)`` uint8 on the model grid (prepare_case's label path)."""
    rec = prepared.record
    if tuple(labels.shape) != tuple(rec.case_shape):
        raise ValueError(f"labels must be on the case grid {rec.case_shape}; got {labels.shape}")
    x0, x1, y0, y1, z0, z1 = rec.crop
    pad = rec.pad
    lab = torch.from_numpy(np.ascontiguousarray(labels[x0:x1, y0:y1, z0:z1], dtype=np.float32))
    lab = F.pad(lab.permute(2, 0, 1)[:, None], (pad[2], pad[3], pad[0], pad[1]))
    size = (rec.input_size, rec.input_size)
    return F.interpolate(lab, size=size, mode="nearest-exact")[:, 0].to(torch.uint8)


def _overlap(active: np.ndarray, labels: np.ndarray) -> dict[str, dict[str, float]]:
    n_active = int(active.sum())
    out = {}
    for lab, name in LABEL_NAMES.items():
        region = labels == lab
        inter = int((active & region).sum())
        union = int((active | region).sum())
        out[name] = {
            "iou": inter / union if union else 0.0,
            "precision": inter / n_active if n_active else 0.0,
        }
    return out


def _rank(values: torch.Tensor, top_k: int) -> list[int]:
    order = torch.argsort(values, descending=True, stable=True)[:top_k]
    return [int(j) for j in order if values[j] > 0]


def frozen_summary(
    sae,
    prefix_h,
    prepared,
    labels_pred: np.ndarray | torch.Tensor,
    label_gt: np.ndarray | None = None,
    top_k: int = 10,
    *,
    affine: np.ndarray | None = None,
):
    """Top latents of one volume from hook activations the caller already computed.

    Args:
        sae: the SAE for the model's hook.
        prefix_h: ``(Z', C, h, w)`` hook activations of every prepared slice, or a list of
            per-batch ``(B, C, h, w)`` tensors in slice order.
        prepared: the ``PreparedCase`` the slices came from.
        labels_pred: predicted labels, case grid ``(X, Y, Z)`` or slice grid ``(Z', S, S)``.
        label_gt: ground-truth labels ``(X, Y, Z)`` or None.
        top_k: latents per ranking (default 10).
        affine: the case's RAS affine (``case.geometry.affine``) for ``centroid_mm``.
    """
    h = torch.cat(list(prefix_h), dim=0) if not torch.is_tensor(prefix_h) else prefix_h
    n_slices = len(prepared.z_indices)
    if h.ndim != 4 or h.shape[0] != n_slices:
        raise ValueError(f"prefix activations must be (Z'={n_slices}, C, h, w); got {tuple(h.shape)}")
    maps = encode_maps(sae, h)  # (Z', d, h, w)
    hw = tuple(maps.shape[-2:])
    brain_px = input_brain_mask(torch.as_tensor(prepared.slices))
    token_brain = F.adaptive_avg_pool2d(brain_px.float()[:, None], hw)[:, 0] >= 0.5
    pred = np.asarray(labels_pred)
    pred_slices = (
        labels_to_slice_grid(prepared, pred)
        if pred.shape == tuple(prepared.record.case_shape)
        else (torch.as_tensor(pred))
    )
    pred_case = (
        pred if pred.shape == tuple(prepared.record.case_shape) else prepared.labels_to_case_grid(pred)
    )
    tumour_frac = F.adaptive_avg_pool2d((pred_slices > 0).float()[:, None], hw)[:, 0]
    masked = maps * token_brain[:, None]
    total = masked.sum(dim=(0, 2, 3))
    tumour = (masked * tumour_frac[:, None]).sum(dim=(0, 2, 3))
    top_total, top_tumour = _rank(total, top_k), _rank(tumour, top_k)
    selected = sorted(set(top_total) | set(top_tumour))
    brain = np.asarray(prepared.brain_mask, dtype=bool)
    token_maps = {j: masked[:, j].clone() for j in selected}
    stats = {}
    for c in range(0, len(selected), 4):  # 4 latents (value + activity channels) per resampling call
        chunk = selected[c : c + 4]
        stack = torch.stack([token_maps[j] for j in chunk] + [(token_maps[j] > 0).float() for j in chunk], 1)
        grid = prepared.to_case_grid(stack)
        for i, j in enumerate(chunk):
            active = (grid[len(chunk) + i] >= 0.5) & brain
            value = grid[i]
            value[~brain] = 0.0
            stats[j] = _latent_stat(
                j, float(total[j]), float(tumour[j]), active, value, pred_case, label_gt, affine
            )
    return top_total, top_tumour, stats


def _latent_stat(
    j: int,
    total: float,
    tumour: float,
    active: np.ndarray,
    value: np.ndarray,
    pred: np.ndarray,
    gt: np.ndarray | None,
    affine: np.ndarray | None,
) -> LatentStat:
    n = int(active.sum())
    centroid_vox = centroid_mm = None
    vmax = vmean = 0.0
    if n:
        w = value[active].astype(np.float64)
        vmax, vmean = float(w.max()), float(w.mean())
        idx = np.argwhere(active).astype(np.float64)
        weights = np.maximum(w, 0) + 1e-12
        c = (idx * weights[:, None]).sum(axis=0) / weights.sum()
        centroid_vox = [float(v) for v in c]
        if affine is not None:
            centroid_mm = [float(v) for v in (np.asarray(affine) @ np.append(c, 1.0))[:3]]
    return LatentStat(
        latent=j,
        total_activation=total,
        tumour_activation=tumour,
        max_activation=vmax,
        mean_activation=vmean,
        active_voxels=n,
        centroid_voxel=centroid_vox,
        centroid_mm=centroid_mm,
        overlap_pred=_overlap(active, pred),
        overlap_gt=_overlap(active, np.asarray(gt)) if gt is not None else None,
    )
