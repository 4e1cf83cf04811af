"""Per-volume latent summary: which latents fire in one case, where, and how they overlap regions.

Designed so the caller runs the network ONCE: segmentation computes ``model.run_prefix`` per
slice batch anyway, so it passes the hook activations here (:func:`summarise_latents`); this
module only encodes them with the SAE and upsamples the few selected latents to the case grid.

Definitions (all on the case's RAS grid, after ``PreparedCase.to_case_grid``):

- ``total_activation``: sum of the latent's code over all brain tokens (token grid).
- ``tumour_activation``: the same sum weighted by the fraction of each token's patch that the
  model predicts as tumour (labels 1..3).
- ``active voxels``: brain voxels where the upsampled binary activity map (code > 0) is >= 0.5,
  i.e. voxels whose nearest tokens fire.
- ``max_activation`` / ``mean_activation``: max and mean of the upsampled activation map over
  the active voxels (same units as the SAE codes).
- ``centroid_voxel``: activation-weighted centroid of the active voxels, ``(x, y, z)`` voxel
  indices; ``centroid_mm``: the same through the case's RAS affine (mm), when given.
- overlap with a region R (predicted and, when present, ground truth NCR/SNFH/ET):
  ``iou = |A & R| / |A | R|``, ``precision = |A & R| / |A|`` (0 when undefined).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medseglens_core.analysis.encode import SAELike, encode_maps, input_brain_mask
from medseglens_core.errors import InvalidInput, NotFound

LABEL_NAMES = {1: "NCR", 2: "SNFH", 3: "ET"}


@dataclass
class LatentStat:
    """Summary of one latent in one volume (see module docstring for definitions)."""

    latent: int
    total_activation: float
    tumour_activation: float
    max_activation: float
    mean_activation: float
    active_voxels: int
    centroid_voxel: list[float] | None
    centroid_mm: list[float] | None
    overlap_pred: dict[str, dict[str, float]] = field(default_factory=dict)
    overlap_gt: dict[str, dict[str, float]] | None = None


@dataclass
class VolumeLatents:
    """Latent summary of one volume.

    ``top_total`` / ``top_tumour``: latent ids ranked by total / in-tumour activation.
    ``stats``: latent -> :class:`LatentStat` for every latent in either list.
    ``token_maps``: latent -> ``(Z', h, w)`` codes on the token grid (only selected latents).
    """

    top_total: list[int]
    top_tumour: list[int]
    stats: dict[int, LatentStat]
    token_maps: dict[int, torch.Tensor]
    prepared: Any
    brain_mask: np.ndarray

    def latent_map(self, latent: int) -> np.ndarray:
        """``(X, Y, Z)`` float32 activation map of ``latent`` on the case RAS grid (0 outside brain)."""
        if latent not in self.token_maps:
            raise NotFound(f"latent {latent} was not summarised; choose one of {sorted(self.token_maps)}")
        out = self.prepared.to_case_grid(self.token_maps[latent][:, None])[0]
        out[~self.brain_mask] = 0.0
        return out

    def write_latent_map(self, latent: int, geometry: Any, path: Path | str) -> None:
        """Write :meth:`latent_map` as NIfTI on the input file's grid (``io.write_volume``)."""
        from medseglens_core.io import write_volume

        write_volume(self.latent_map(latent), geometry, path)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"top_total": [...], "top_tumour": [...], "latents": [LatentStat...]}``."""
        return {
            "top_total": self.top_total,
            "top_tumour": self.top_tumour,
            "latents": [asdict(self.stats[j]) for j in sorted(self.stats)],
        }


def labels_to_slice_grid(prepared: Any, labels: np.ndarray) -> torch.Tensor:
    """Case-grid labels ``(X, Y, Z)`` -> ``(Z', S, S)`` uint8 on the model grid (prepare_case's label path)."""
    rec = prepared.record
    if tuple(labels.shape) != tuple(rec.case_shape):
        raise InvalidInput(f"labels must be on the case grid {rec.case_shape}; got {labels.shape}")
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


def summarise_latents(
    sae: SAELike,
    prefix_h: torch.Tensor | Sequence[torch.Tensor],
    prepared: Any,
    labels_pred: np.ndarray | torch.Tensor,
    label_gt: np.ndarray | None = None,
    top_k: int = 10,
    *,
    affine: np.ndarray | None = None,
) -> VolumeLatents:
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
        raise InvalidInput(f"prefix activations must be (Z'={n_slices}, C, h, w); got {tuple(h.shape)}")
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
    result = VolumeLatents(
        top_total, top_tumour, {}, {j: masked[:, j].clone() for j in selected}, prepared, brain
    )
    for c in range(0, len(selected), 4):  # 4 latents (value + activity channels) per resampling call
        chunk = selected[c : c + 4]
        stack = torch.stack(
            [result.token_maps[j] for j in chunk] + [(result.token_maps[j] > 0).float() for j in chunk], 1
        )
        grid = prepared.to_case_grid(stack)
        for i, j in enumerate(chunk):
            active = (grid[len(chunk) + i] >= 0.5) & brain
            value = grid[i]
            value[~brain] = 0.0
            result.stats[j] = _latent_stat(
                j, float(total[j]), float(tumour[j]), active, value, pred_case, label_gt, affine
            )
    return result


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


def analyse_case(
    model: Any, sae: SAELike, case: Any, *, hook: str, input_size: int, top_k: int = 10, batch_size: int = 16
) -> tuple[np.ndarray, VolumeLatents]:
    """Segment ``case`` and summarise its latents with ONE network pass.

    Returns ``(labels (X, Y, Z) uint8 on the case grid, VolumeLatents)``.
    """
    from medseglens_core.data.preprocess import prepare_case

    prepared = prepare_case(case, input_size)
    hs, logits = [], []
    with torch.no_grad():
        for i in range(0, prepared.slices.shape[0], batch_size):
            p = model.run_prefix(prepared.slices[i : i + batch_size], hook)
            hs.append(p.h)
            logits.append(model.run_suffix(p, p.h).softmax(dim=1))
    probs = prepared.to_case_grid(torch.cat(logits))
    probs[0][~np.asarray(prepared.brain_mask, dtype=bool)] = np.inf  # background outside the brain
    labels = probs.argmax(axis=0).astype(np.uint8)
    summary = summarise_latents(sae, hs, prepared, labels, case.label, top_k, affine=case.geometry.affine)
    return labels, summary
