"""Per-volume latent summary: which latents fire in one case, where, and how they overlap regions.

Designed so the caller runs the network ONCE: segmentation computes ``model.run_prefix`` per
slice batch anyway, so it passes the hook activations here (:func:`summarise_latents`); this
module only encodes the brain tokens with the SAE, ranks the latents on the token grid, and
measures the few selected latents without upsampling them (``analysis.latent_cells``: exact
sums from per-(slice, token cell, firing pattern) tables). Full-resolution maps are made only on
request (:meth:`VolumeLatents.latent_map`, :meth:`VolumeLatents.write_latent_map`).

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

Precision: latents are ranked, and ``total_activation`` / ``tumour_activation`` reported, from
codes encoded with float32 arithmetic (``encode.encode_fast``; ~1e-6 relative to ``sae.encode``).
The selected latents' token maps, and so every per-voxel statistic and latent map, use the exact
codes of ``sae.encode`` -- the ones the service's latent maps and interventions show. Voxel counts
and overlaps are exact; ``max_activation`` is the upsampled map's own float32 value; sums
behind ``mean_activation`` and the centroid are float32 tables (~1e-6 relative).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medseglens_core.analysis.encode import (
    SAELike,
    brain_token_mask,
    encode_fast,
    exact_columns,
    input_brain_mask,
    masked_tokens,
)
from medseglens_core.analysis.latent_cells import active_max, case_blocks, cell_geometry, latent_sums, mm
from medseglens_core.analysis.threads import one_thread
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
    ``firing_rate``: ``(d_sae,)`` float64 fraction of the brain tokens on which each latent fires
    (the OOD flag's latent profile, ``analysis.ood.latent_rates``, from the same codes).
    """

    top_total: list[int]
    top_tumour: list[int]
    stats: dict[int, LatentStat]
    token_maps: dict[int, torch.Tensor]
    prepared: Any
    brain_mask: np.ndarray
    firing_rate: np.ndarray | None = None

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


def _pool_matrix(n_tok: int, size: int, n_pad: int, start: int, length: int) -> np.ndarray:
    """``(n_tok, length)``: weight of crop row ``i`` in token ``a`` along one axis of the label path.

    Composes the label path's nearest-exact resize (padded ``n_pad`` -> model ``size``) with
    ``adaptive_avg_pool2d`` (``size`` -> ``n_tok``): ``G[a, i]`` = (model pixels of bin ``a`` that
    read crop row ``i``) / (bin size). Padding rows read nothing.
    """
    src = F.interpolate(torch.arange(n_pad, dtype=torch.float32)[None, None], size=size, mode="nearest-exact")
    src = src[0, 0].long().numpy() - start
    g = np.zeros((n_tok, length), dtype=np.float32)
    for a in range(n_tok):
        lo, hi = (a * size) // n_tok, -((-(a + 1) * size) // n_tok)  # adaptive pooling bin
        rows = src[lo:hi]
        np.add.at(g[a], rows[(rows >= 0) & (rows < length)], np.float32(1.0 / (hi - lo)))
    return g


def token_tumour_fraction(prepared: Any, labels: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """``(Z', h, w)`` float32 fraction of each token's model-grid patch with case-grid ``labels > 0``.

    Equals ``adaptive_avg_pool2d(labels_to_slice_grid(prepared, labels) > 0, hw)`` (to float32
    rounding when the pooling bins are unequal), computed from the crop box with two small
    matmuls: both are averages of 0/1 over the same pixels.
    """
    rec = prepared.record
    x0, x1, y0, y1, z0, z1 = rec.crop
    gx = _pool_matrix(hw[0], rec.input_size, rec.padded_shape[0], rec.pad[0], x1 - x0)  # (h, cx)
    gy = _pool_matrix(hw[1], rec.input_size, rec.padded_shape[1], rec.pad[2], y1 - y0)  # (w, cy)
    tumour = (labels[x0:x1, y0:y1, z0:z1] > 0).astype(np.float32).reshape(x1 - x0, -1)  # (cx, cy * Z')
    rows = mm(gx, tumour).reshape(hw[0], y1 - y0, z1 - z0)  # (h, cy, Z')
    return mm(gy, rows).transpose(2, 0, 1)  # (h, w, Z') -> (Z', h, w)


def _rank(values: np.ndarray, top_k: int) -> list[int]:
    """Latents with the ``top_k`` largest positive values, largest first (ties: lower id first)."""
    order = np.argsort(-values, kind="stable")[:top_k]
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
    pieces = [prefix_h] if torch.is_tensor(prefix_h) else list(prefix_h)
    n_slices = len(prepared.z_indices)
    if any(p.ndim != 4 for p in pieces) or sum(p.shape[0] for p in pieces) != n_slices:
        shapes = [tuple(p.shape) for p in pieces]
        raise InvalidInput(f"prefix activations must be (Z'={n_slices}, C, h, w) in total; got {shapes}")
    pred = np.asarray(labels_pred)
    brain = np.asarray(prepared.brain_mask, dtype=bool)
    with one_thread():  # small steps: see analysis.threads
        on_case_grid = pred.shape == tuple(prepared.record.case_shape)
        pred_case = pred if on_case_grid else prepared.labels_to_case_grid(pred)
        top_total, top_tumour, total, tumour, tok, rates = _rank_latents(sae, pieces, prepared, pred, top_k)
        selected = sorted(set(top_total) | set(top_tumour))
        stats = _voxel_stats(selected, tok.numpy(), prepared, brain, pred_case, label_gt, affine)
    for j in selected:
        stats[j].total_activation, stats[j].tumour_activation = float(total[j]), float(tumour[j])
    token_maps = {j: tok[i] for i, j in enumerate(selected)}
    return VolumeLatents(top_total, top_tumour, stats, token_maps, prepared, brain, rates)


def _rank_latents(
    sae: SAELike, pieces: list[torch.Tensor], prepared: Any, pred: np.ndarray, top_k: int
) -> tuple[list[int], list[int], np.ndarray, np.ndarray, torch.Tensor, np.ndarray]:
    """``(top_total, top_tumour, total (d_sae,), tumour (d_sae,), token maps (S, Z', h, w),
    firing rate (d_sae,))``.

    Token maps hold the exact codes of the selected latents (sorted ids), 0 off the brain.
    """
    hw = (int(pieces[0].shape[2]), int(pieces[0].shape[3]))
    token_brain = brain_token_mask(input_brain_mask(torch.as_tensor(prepared.slices)), hw)
    with torch.no_grad():
        tokens = masked_tokens(pieces, token_brain)  # only brain tokens count
        codes, pre = encode_fast(sae, tokens)  # (brain tokens, d_sae) float32
        codes = codes.cpu().numpy()
    rates = np.count_nonzero(codes > 0, axis=0) / max(len(codes), 1)
    if pred.shape == tuple(prepared.record.case_shape):
        tumour_frac = token_tumour_fraction(prepared, pred, hw)
    else:
        tumour_frac = F.adaptive_avg_pool2d((torch.as_tensor(pred) > 0).float()[:, None], hw)[:, 0].numpy()
    in_brain = token_brain.numpy().reshape(-1)
    weights = np.stack([np.ones(len(codes), np.float32), tumour_frac.reshape(-1)[in_brain]])
    total, tumour = mm(weights, codes)  # (d_sae,) each, float32 sums as on the token maps
    top_total, top_tumour = _rank(total, top_k), _rank(tumour, top_k)
    selected = sorted(set(top_total) | set(top_tumour))
    tok = np.zeros((len(selected), in_brain.size), dtype=np.float32)
    if selected:
        shown = codes[:, selected] if pre is None else exact_columns(sae, tokens, pre, selected).cpu().numpy()
        tok[:, in_brain] = shown.T
    return (
        top_total,
        top_tumour,
        total,
        tumour,
        torch.from_numpy(tok.reshape(len(selected), *token_brain.shape)),
        rates,
    )


def _count_labels(labels: np.ndarray) -> np.ndarray:
    """Labels as uint8 with anything outside 1..3 counted as background."""
    labels = np.asarray(labels)
    if labels.dtype == np.uint8 and (labels.size == 0 or labels.max() <= 3):
        return labels
    return np.where((labels >= 1) & (labels <= 3), labels, 0).astype(np.uint8)


def _voxel_stats(
    selected: list[int],
    tok: np.ndarray,
    prepared: Any,
    brain: np.ndarray,
    pred: np.ndarray,
    gt: np.ndarray | None,
    affine: np.ndarray | None,
) -> dict[int, LatentStat]:
    """:class:`LatentStat` (activation totals left 0) of latents with token maps ``tok (S, Z', h, w)`` float32."""
    if not selected:
        return {}
    rec = prepared.record
    x0, x1, y0, y1, z0, z1 = rec.crop
    box = (slice(x0, x1), slice(y0, y1), slice(z0, z1))
    pred = _count_labels(pred)
    gt = _count_labels(gt) if gt is not None else None
    geom = cell_geometry(rec, (tok.shape[2], tok.shape[3]))
    blocks = case_blocks(geom, brain[box], pred[box], gt[box] if gt is not None else None)
    counts, value = latent_sums(blocks, tok.reshape(*tok.shape[:2], -1))  # (S, Z', 7), (S, Z', 3)
    vmax = active_max(tok, brain[box].transpose(2, 0, 1), counts[..., 0] > 0, rec)
    n = np.rint(counts[..., 0].sum(1)).astype(np.int64)
    inter = np.rint(counts[..., 1:].sum(1)).astype(np.int64)  # (S, 6): pred NCR/SNFH/ET, GT NCR/SNFH/ET
    z = np.arange(z0, z1, dtype=np.float64)
    moments = np.concatenate([value.sum(1), (value[..., 0] * z).sum(1, keepdims=True)], 1)  # v, v*x, v*y, v*z
    size_pred = [int(np.count_nonzero(pred == lab)) for lab in LABEL_NAMES]
    size_gt = [int(np.count_nonzero(gt == lab)) for lab in LABEL_NAMES] if gt is not None else None
    stats = {}
    for i, j in enumerate(selected):
        stats[j] = _latent_stat(j, int(n[i]), moments[i].tolist(), float(vmax[i]), affine)
        stats[j].overlap_pred = _overlap(int(n[i]), inter[i, :3].tolist(), size_pred)
        if size_gt is not None:
            stats[j].overlap_gt = _overlap(int(n[i]), inter[i, 3:].tolist(), size_gt)
    return stats


def _overlap(n_active: int, inter: list[int], sizes: list[int]) -> dict[str, dict[str, float]]:
    """IoU and precision of ``n_active`` voxels against the regions of ``LABEL_NAMES``."""
    out = {}
    for name, i, size in zip(LABEL_NAMES.values(), inter, sizes, strict=True):
        union = n_active + size - i
        out[name] = {"iou": i / union if union else 0.0, "precision": i / n_active if n_active else 0.0}
    return out


def _latent_stat(j: int, n: int, moments: list[float], vmax: float, affine: np.ndarray | None) -> LatentStat:
    """Max, mean and centroid from the sums over the active voxels (``moments``: sum v, v*x, v*y, v*z)."""
    centroid_vox = centroid_mm = None
    vmean = 0.0
    if n:
        vmean = moments[0] / n
        if moments[0] > 0:
            c = np.asarray(moments[1:]) / moments[0]
            centroid_vox = [float(v) for v in c]
            if affine is not None:
                centroid_mm = [float(v) for v in (np.asarray(affine) @ np.append(c, 1.0))[:3]]
    return LatentStat(
        latent=j,
        total_activation=0.0,
        tumour_activation=0.0,
        max_activation=vmax if n else 0.0,
        mean_activation=vmean,
        active_voxels=n,
        centroid_voxel=centroid_vox,
        centroid_mm=centroid_mm,
    )


def analyse_case(
    model: Any, sae: SAELike, case: Any, *, hook: str, input_size: int, top_k: int = 10, batch_size: int = 16
) -> tuple[np.ndarray, VolumeLatents]:
    """Segment ``case`` and summarise its latents with ONE network pass.

    Returns ``(labels (X, Y, Z) uint8 on the case grid, VolumeLatents)``; the labels are those of
    ``models.inference.segment_case`` (same softmax, same mapping back to the case grid).
    """
    from medseglens_core.data.preprocess import prepare_case

    prepared = prepare_case(case, input_size, with_labels=False)  # the summary reads case.label itself
    slices = prepared.slices
    device = next(iter(model.parameters()), torch.empty(0)).device
    hs, probs = [], None
    with torch.inference_mode():
        for i in range(0, slices.shape[0], batch_size):
            p = model.run_prefix(slices[i : i + batch_size].to(device), hook)
            hs.append(p.h)
            out = torch.softmax(model.run_suffix(p, p.h).float(), dim=1).cpu()
            if probs is None:
                probs = torch.empty((slices.shape[0], *out.shape[1:]), dtype=torch.float32)
            probs[i : i + out.shape[0]] = out
    labels = prepared.argmax_to_case_grid(probs)  # = probs_to_labels(prepared, probs)[0]
    summary = summarise_latents(sae, hs, prepared, labels, case.label, top_k, affine=case.geometry.affine)
    return labels, summary
