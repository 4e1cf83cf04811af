"""The invertible volume -> slice-batch chain the 2-D models see, and its inverse.

Forward (:func:`prepare_case`), on a :class:`~medseglens_core.io.case.Case` (RAS, ``[x, y, z]``):

1. brain mask: voxels nonzero in any modality (BraTS-style skull-stripped input);
2. crop to the mask's bounding box, plus ``margin_mm`` in-plane; in z only brain slices are kept;
3. z-score each modality with the mean and standard deviation inside the mask; 0 outside it
   (done on the native grid, before resampling, so the statistics are those of real voxels);
4. zero-pad in-plane to a square field of view in millimetres (keeps the physical aspect,
   also for anisotropic in-plane spacing);
5. resample each axial slice ``[:, :, z]`` to ``input_size x input_size``
   (``torch.nn.functional.interpolate``: bilinear with antialiasing for images, nearest-exact
   for labels).

Every step's parameters are kept in one frozen :class:`PrepRecord`; :meth:`PreparedCase.to_case_grid`
undoes steps 5, 4 and 2 for any per-slice map (logits, probabilities, latent maps), giving
``(C, X, Y, Z)`` on the case's RAS grid with ``fill`` outside the crop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from medseglens_core.errors import InvalidInput

DEFAULT_MARGIN_MM = 4.0


class EmptyBrainMask(InvalidInput):
    """No voxel is nonzero in any modality, so there is no brain to segment."""


@dataclass(frozen=True)
class PrepRecord:
    """Parameters of each preprocessing step, enough to invert it.

    Attributes:
        case_shape: ``(X, Y, Z)`` of the case grid (RAS).
        spacing: voxel size in mm along X, Y, Z.
        crop: half-open voxel box ``(x0, x1, y0, y1, z0, z1)`` on the case grid.
        pad: zero padding ``(x_before, x_after, y_before, y_after)`` in voxels added in-plane
            to the cropped slices to make the field of view square in mm.
        padded_shape: ``(nx, ny)`` in-plane shape after padding, voxels.
        input_size: side of the model's square slices, pixels.
        mean: per-modality mean inside the brain mask (input intensity units).
        std: per-modality standard deviation inside the brain mask (1.0 where it was 0).
        pixel_mm: in-plane size of one model pixel, mm.
    """

    case_shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    crop: tuple[int, int, int, int, int, int]
    pad: tuple[int, int, int, int]
    padded_shape: tuple[int, int]
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pixel_mm: float


@dataclass(frozen=True)
class PreparedCase:
    """A case as model-ready axial slices.

    Attributes:
        slices: ``(Z', 4, S, S)`` float32 tensor, one entry per kept axial slice
            ``z = crop[4] + k``; channels in MODALITIES order; S = input_size.
        labels: ``(Z', S, S)`` uint8 tensor of labels 0..3, or None when the case has none.
        brain_mask: ``(X, Y, Z)`` bool array on the case grid.
        record: the step parameters (:class:`PrepRecord`).
    """

    slices: torch.Tensor
    labels: torch.Tensor | None
    brain_mask: np.ndarray
    record: PrepRecord

    @property
    def z_indices(self) -> range:
        """Case-grid z index of each slice."""
        return range(self.record.crop[4], self.record.crop[5])

    def to_case_grid(self, slice_maps: torch.Tensor | np.ndarray, fill: float = 0.0) -> np.ndarray:
        """Map per-slice maps ``(Z', C, h, w)`` back to ``(C, X, Y, Z)`` float32 on the case grid.

        ``h, w`` may be the model size or any other (e.g. a latent map at 1/16 resolution): maps
        are resampled bilinearly (align_corners=False) to the padded field of view, unpadded and
        placed in the crop box; voxels outside the crop get ``fill``.
        """
        rec = self.record
        maps = torch.as_tensor(slice_maps).float()
        if maps.ndim != 4 or maps.shape[0] != len(self.z_indices):
            raise InvalidInput(
                f"slice maps must be (Z'={len(self.z_indices)}, C, h, w), got {tuple(maps.shape)}"
            )
        x0, x1, y0, y1, z0, z1 = rec.crop
        out = np.full((maps.shape[1], *rec.case_shape), fill, dtype=np.float32)
        if tuple(maps.shape[-2:]) != rec.padded_shape:
            maps = F.interpolate(maps, size=rec.padded_shape, mode="bilinear", align_corners=False)
        px0, _, py0, _ = rec.pad
        maps = maps[:, :, px0 : px0 + x1 - x0, py0 : py0 + y1 - y0]
        out[:, x0:x1, y0:y1, z0:z1] = maps.permute(1, 2, 3, 0).numpy()
        return out

    def argmax_to_case_grid(self, slice_probs: torch.Tensor, chunk: int = 16) -> np.ndarray:
        """``(X, Y, Z)`` uint8 labels: the argmax over classes of :meth:`to_case_grid` of the slice
        probabilities ``(Z', C, h, w)``, background outside the crop and outside the brain mask.

        Exactly the labels of ``to_case_grid(probs).argmax(0)`` (same per-slice bilinear resampling,
        first maximum on ties), without materialising the ``(C, X, Y, Z)`` float grid: slices are
        resampled ``chunk`` at a time and reduced to labels in torch.
        """
        rec = self.record
        probs = torch.as_tensor(slice_probs)
        if probs.ndim != 4 or probs.shape[0] != len(self.z_indices):
            raise InvalidInput(
                f"slice maps must be (Z'={len(self.z_indices)}, C, h, w), got {tuple(probs.shape)}"
            )
        x0, x1, y0, y1, z0, z1 = rec.crop
        px0, _, py0, _ = rec.pad
        inside = np.empty((z1 - z0, x1 - x0, y1 - y0), dtype=np.uint8)
        with torch.inference_mode():
            for s in range(0, probs.shape[0], chunk):
                maps = probs[s : s + chunk].float()
                if tuple(maps.shape[-2:]) != rec.padded_shape:
                    maps = F.interpolate(maps, size=rec.padded_shape, mode="bilinear", align_corners=False)
                maps = maps[:, :, px0 : px0 + x1 - x0, py0 : py0 + y1 - y0]
                inside[s : s + maps.shape[0]] = first_argmax(maps).numpy()
        out = np.zeros(rec.case_shape, dtype=np.uint8)
        out[x0:x1, y0:y1, z0:z1] = inside.transpose(1, 2, 0)
        out[~self.brain_mask] = 0
        return out

    def labels_to_case_grid(self, slice_labels: torch.Tensor | np.ndarray) -> np.ndarray:
        """Map per-slice label maps ``(Z', S, S)`` (ints) to ``(X, Y, Z)`` uint8, 0 outside the crop."""
        lab = torch.as_tensor(slice_labels)
        onehot = F.one_hot(lab.long(), num_classes=int(lab.max()) + 1 if lab.numel() else 1)
        probs = self.to_case_grid(onehot.permute(0, 3, 1, 2).float())
        out = probs.argmax(axis=0).astype(np.uint8)
        out[~self._crop_mask()] = 0
        return out

    def _crop_mask(self) -> np.ndarray:
        x0, x1, y0, y1, z0, z1 = self.record.crop
        m = np.zeros(self.record.case_shape, dtype=bool)
        m[x0:x1, y0:y1, z0:z1] = True
        return m


def first_argmax(maps: torch.Tensor) -> torch.Tensor:
    """``(N, h, w)`` uint8 index of the largest of the ``C`` channels of ``maps`` ``(N, C, h, w)``,
    the first one on ties (as ``argmax``). A running strict comparison over the few channels: torch's
    ``argmax(dim=1)`` over NCHW is ~30x slower on the CPU. Probabilities have no NaN."""
    best = maps[:, 0]
    out = torch.zeros(best.shape, dtype=torch.uint8)
    for c in range(1, maps.shape[1]):
        out.masked_fill_(maps[:, c] > best, c)
        best = torch.maximum(best, maps[:, c])
    return out


def brain_mask(image: np.ndarray) -> np.ndarray:
    """``(X, Y, Z)`` bool: voxels where any modality of ``image`` ``(4, X, Y, Z)`` is nonzero."""
    return np.any(image != 0, axis=0)


def crop_box(mask: np.ndarray, spacing: tuple[float, float, float], margin_mm: float) -> tuple[int, ...]:
    """Half-open bounding box ``(x0, x1, y0, y1, z0, z1)`` of ``mask``, grown in-plane by ``margin_mm``."""
    if not mask.any():
        raise EmptyBrainMask(
            "every voxel is zero in all four modalities; check that the right files were given"
        )
    box: list[int] = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        grow = int(math.ceil(margin_mm / spacing[axis])) if axis < 2 else 0
        box += [max(int(idx[0]) - grow, 0), min(int(idx[-1]) + 1 + grow, mask.shape[axis])]
    return tuple(box)


def zscore(image: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, tuple[float, ...], tuple[float, ...]]:
    """Z-score each channel of ``image`` ``(C, ...)`` inside ``mask``; 0 outside. Returns (out, mean, std)."""
    out = np.zeros(image.shape, dtype=np.float32)
    means, stds = [], []
    for c in range(image.shape[0]):
        vals = image[c][mask].astype(np.float64)
        mean, std = float(vals.mean()), float(vals.std())
        std = std if std > 1e-8 else 1.0
        out[c][mask] = ((vals - mean) / std).astype(np.float32)
        means.append(mean)
        stds.append(std)
    return out, tuple(means), tuple(stds)


def _square_pad(cx: int, cy: int, sx: float, sy: float) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    side_mm = max(cx * sx, cy * sy)
    nx, ny = max(cx, round(side_mm / sx)), max(cy, round(side_mm / sy))
    pad = ((nx - cx) // 2, nx - cx - (nx - cx) // 2, (ny - cy) // 2, ny - cy - (ny - cy) // 2)
    return pad, (nx, ny)


def prepare_case(case, input_size: int, *, margin_mm: float = DEFAULT_MARGIN_MM) -> PreparedCase:
    """Run the forward chain on ``case`` (a :class:`~medseglens_core.io.case.Case`).

    Args:
        case: ``image`` (4, X, Y, Z) RAS, ``label`` (X, Y, Z) or None, ``geometry.spacing`` (mm).
        input_size: side of the model's square slices, pixels (the model card's input size).
        margin_mm: in-plane margin around the brain's bounding box, mm (default 4).
    """
    if input_size < 8:
        raise InvalidInput(f"input_size must be at least 8 pixels, got {input_size}")
    image = np.asarray(case.image)
    spacing = tuple(float(s) for s in case.geometry.spacing)
    mask = brain_mask(image)
    x0, x1, y0, y1, z0, z1 = box = crop_box(mask, spacing, margin_mm)
    cropped, mean, std = zscore(image[:, x0:x1, y0:y1, z0:z1], mask[x0:x1, y0:y1, z0:z1])
    pad, padded = _square_pad(x1 - x0, y1 - y0, spacing[0], spacing[1])
    size = (input_size, input_size)
    # (4, cx, cy, Z') -> (Z', 4, nx, ny) -> (Z', 4, S, S)
    slices = F.pad(torch.from_numpy(cropped).permute(3, 0, 1, 2), (pad[2], pad[3], pad[0], pad[1]))
    slices = F.interpolate(slices, size=size, mode="bilinear", align_corners=False, antialias=True)
    labels = None
    if case.label is not None:
        lab = torch.from_numpy(np.ascontiguousarray(case.label[x0:x1, y0:y1, z0:z1], dtype=np.float32))
        lab = F.pad(lab.permute(2, 0, 1)[:, None], (pad[2], pad[3], pad[0], pad[1]))
        labels = F.interpolate(lab, size=size, mode="nearest-exact")[:, 0].to(torch.uint8)
    record = PrepRecord(
        case_shape=tuple(int(s) for s in image.shape[1:]),
        spacing=spacing,
        crop=box,
        pad=pad,
        padded_shape=padded,
        input_size=input_size,
        mean=mean,
        std=std,
        pixel_mm=padded[0] * spacing[0] / input_size,
    )
    return PreparedCase(slices=slices.contiguous(), labels=labels, brain_mask=mask, record=record)
