"""The invertible volume -> slice-batch chain the 2-D models see, and its inverse.

Forward (:func:`prepare_case`), on a :class:`~medseglens_core.io.case.Case` (RAS, ``[x, y, z]``):

1. brain mask: voxels nonzero in any modality (BraTS-style skull-stripped input);
2. crop to the mask's bounding box, plus ``margin_mm`` in-plane; in z only brain slices are kept;
3. z-score each modality with the mean and standard deviation inside the mask; 0 outside it
   (the statistics are those of the real voxels on the native grid; the z-score itself is
   applied after resampling, which gives the same slices: see :func:`_resampled_raw`);
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

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

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

    def argmax_to_case_grid(self, slice_probs: torch.Tensor, chunk: int = 8) -> np.ndarray:
        """``(X, Y, Z)`` uint8 labels: the argmax over classes of :meth:`to_case_grid` of the slice
        probabilities ``(Z', C, h, w)``, background outside the crop and outside the brain mask.

        The labels of ``to_case_grid(probs).argmax(0)`` (per-slice bilinear resampling, first
        maximum on ties) without the ``(C, X, Y, Z)`` float grid, and without resampling most of
        it: an output pixel is a convex combination (non-negative weights) of at most 2 x 2 model
        pixels, so where every one of them has class 0 as its first maximum, class 0 is the first
        maximum of the combination too. Only the window of each slice whose sources touch the
        box of its foreground pixels (some class strictly above class 0) is resampled, as two
        small products with torch's own bilinear weights (:func:`bilinear_weights`), clipped to
        the brain's box; runs of up to ``chunk`` consecutive such slices share one window. The
        products sum the same two terms per axis as ``interpolate`` in another rounding order, so
        a class whose probability ties another's to the last bit of float32 after resampling may
        differ; exact ties (equal inputs) resolve as before.
        """
        rec = self.record
        probs = torch.as_tensor(slice_probs)
        if probs.ndim != 4 or probs.shape[0] != len(self.z_indices):
            raise InvalidInput(
                f"slice maps must be (Z'={len(self.z_indices)}, C, h, w), got {tuple(probs.shape)}"
            )
        x0, x1, y0, y1, z0, z1 = rec.crop
        px0, _, py0, _ = rec.pad
        out = np.zeros(rec.case_shape, dtype=np.uint8)
        if probs.shape[1] < 2:
            return out
        h, w = (int(n) for n in probs.shape[-2:])
        rw, cw = bilinear_weights(h, rec.padded_shape[0]), bilinear_weights(w, rec.padded_shape[1])
        brain = self.brain_mask[x0:x1, y0:y1, z0:z1]
        # per slice, the crop rows and columns that hold brain
        b_rows, b_cols = brain.any(axis=1), brain.any(axis=0)  # (cx, Z'), (cy, Z')
        with torch.inference_mode():
            fg = torch.gt(probs[:, 1:].amax(dim=1), probs[:, 0]).numpy()  # (Z', h, w)
            fg_rows, fg_cols = fg.any(axis=2), fg.any(axis=1)  # (Z', h), (Z', w)
            todo = np.flatnonzero(fg_rows.any(axis=1))
            # runs of up to `chunk` consecutive slices share one window (the union of theirs)
            breaks = np.flatnonzero(np.diff(todo) != 1) + 1
            runs = [r[i : i + chunk] for r in np.split(todo, breaks) for i in range(0, r.size, chunk)]
            for run in runs:
                k0, k1 = int(run[0]), int(run[-1]) + 1
                rows = _window(fg_rows[k0:k1].any(axis=0), rw, b_rows[:, k0:k1].any(axis=1), px0)
                cols = _window(fg_cols[k0:k1].any(axis=0), cw, b_cols[:, k0:k1].any(axis=1), py0)
                if rows is None or cols is None:
                    continue
                (i0, i1, a0, a1), (j0, j1, c0, c1) = rows, cols
                p = probs[k0:k1, :, a0:a1, c0:c1].float()  # (k, C, a, c)
                win = rw.w[i0 + px0 : i1 + px0, a0:a1] @ p @ cw.w[j0 + py0 : j1 + py0, c0:c1].t()
                lab = first_argmax(win).numpy().transpose(1, 2, 0)  # (i, j, k)
                np.multiply(
                    lab,
                    brain[i0:i1, j0:j1, k0:k1],
                    out=out[x0 + i0 : x0 + i1, y0 + j0 : y0 + j1, z0 + k0 : z0 + k1],
                )
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
    the first one on ties (as ``argmax``). Comparisons over the few channels: torch's
    ``argmax(dim=1)`` over NCHW is ~30x slower on the CPU. Probabilities have no NaN.

    With 4 classes, a two-level tree: the first maximum of (0, 1), that of (2, 3), and the pair
    (2, 3) only where its maximum is strictly larger, which is the first maximum of all four.
    """
    if maps.shape[1] == 4:
        p0, p1, p2, p3 = maps.unbind(1)
        low = torch.gt(p1, p0).view(torch.uint8)
        high = torch.gt(p3, p2).view(torch.uint8).add_(2)
        pick_high = torch.gt(torch.maximum(p2, p3), torch.maximum(p0, p1)).view(torch.uint8)
        return (
            high.sub_(low).mul_(pick_high).add_(low)
        )  # low + pick * (high - low): torch.where is ~20x slower
    best = maps[:, 0].clone()  # never a view of the caller's maps: updated in place
    out = torch.zeros(best.shape, dtype=torch.uint8)
    for c in range(1, maps.shape[1]):
        out.masked_fill_(maps[:, c] > best, c)
        if c + 1 < maps.shape[1]:
            torch.maximum(best, maps[:, c], out=best)
    return out


@dataclass(frozen=True)
class _Weights:
    """torch's bilinear weights from ``n_in`` to ``n_out`` samples (align_corners=False):
    ``w (n_out, n_in)`` float32 and, per output sample, the first and last source index with a
    nonzero weight (``lo``, ``hi``, inclusive)."""

    w: torch.Tensor
    lo: np.ndarray
    hi: np.ndarray


def _identity_weights(n_in: int, n_out: int, antialias: bool) -> torch.Tensor:
    """``(n_out, n_in)`` float32: the weights ``interpolate(mode="bilinear", align_corners=False,
    antialias=...)`` gives each source sample along one axis, read off by resampling the identity
    along the last axis (exact: one nonzero input per column). Not along H of a one-pixel-wide
    image: there torch's antialiased weights come out wrong (every output row the same)."""
    eye = torch.eye(n_in, dtype=torch.float32).reshape(n_in, 1, 1, n_in)
    kw = {"mode": "bilinear", "align_corners": False, "antialias": antialias}
    with torch.inference_mode():
        return F.interpolate(eye, size=(1, n_out), **kw)[:, 0, 0, :].t().contiguous()


@functools.lru_cache(maxsize=64)
def bilinear_weights(n_in: int, n_out: int) -> _Weights:
    """The weights ``interpolate(mode="bilinear", align_corners=False)`` gives each source sample
    along one axis (:func:`_identity_weights`), with each output's source range."""
    w = _identity_weights(n_in, n_out, antialias=False)
    nz = w.numpy() != 0
    lo = np.argmax(nz, axis=1)
    hi = n_in - 1 - np.argmax(nz[:, ::-1], axis=1)
    return _Weights(w, lo, hi)


def _window(
    fg_any: np.ndarray, wts: _Weights, brain_any: np.ndarray, pad0: int
) -> tuple[int, int, int, int] | None:
    """Along one axis: the output range ``[i0, i1)`` (crop coordinates) whose sources touch the
    foreground ``fg_any`` (model samples), clipped to the brain's extent ``brain_any`` (crop
    samples), and the source range ``[a0, a1)`` those outputs read; None when empty."""
    src = np.flatnonzero(fg_any)
    brain = np.flatnonzero(brain_any)
    if src.size == 0 or brain.size == 0:
        return None
    touched = np.flatnonzero((wts.hi >= src[0]) & (wts.lo <= src[-1]))  # padded-grid outputs
    if touched.size == 0:  # downsampling gives some samples no weight: their foreground is lost
        return None
    i0 = max(int(touched[0]) - pad0, int(brain[0]))
    i1 = min(int(touched[-1]) + 1 - pad0, int(brain[-1]) + 1)
    if i0 >= i1:
        return None
    return i0, i1, int(wts.lo[i0 + pad0]), int(wts.hi[i1 - 1 + pad0]) + 1


def brain_mask(image: np.ndarray) -> np.ndarray:
    """``(X, Y, Z)`` bool: voxels where any modality of ``image`` ``(4, X, Y, Z)`` is nonzero."""
    mask = np.not_equal(image[0], 0)
    tmp = np.empty_like(mask)
    for c in range(1, image.shape[0]):  # one channel at a time: no (4, X, Y, Z) bool temporary
        mask |= np.not_equal(image[c], 0, out=tmp)
    return mask


def crop_box(mask: np.ndarray, spacing: tuple[float, float, float], margin_mm: float) -> tuple[int, ...]:
    """Half-open bounding box ``(x0, x1, y0, y1, z0, z1)`` of ``mask``, grown in-plane by ``margin_mm``."""
    in_plane = mask.any(axis=2)  # two passes over the volume: (X, Y) and (Z,) projections
    if not in_plane.any():
        raise EmptyBrainMask(
            "every voxel is zero in all four modalities; check that the right files were given"
        )
    box: list[int] = []
    for axis, along in enumerate((in_plane.any(axis=1), in_plane.any(axis=0), mask.any(axis=(0, 1)))):
        idx = np.flatnonzero(along)
        grow = int(math.ceil(margin_mm / spacing[axis])) if axis < 2 else 0
        box += [max(int(idx[0]) - grow, 0), min(int(idx[-1]) + 1 + grow, mask.shape[axis])]
    return tuple(box)


def _square_pad(cx: int, cy: int, sx: float, sy: float) -> tuple[tuple[int, int, int, int], tuple[int, int]]:
    side_mm = max(cx * sx, cy * sy)
    nx, ny = max(cx, round(side_mm / sx)), max(cy, round(side_mm / sy))
    pad = ((nx - cx) // 2, nx - cx - (nx - cx) // 2, (ny - cy) // 2, ny - cy - (ny - cy) // 2)
    return pad, (nx, ny)


def prepare_case(
    case, input_size: int, *, margin_mm: float = DEFAULT_MARGIN_MM, with_labels: bool = True
) -> PreparedCase:
    """Run the forward chain on ``case`` (a :class:`~medseglens_core.io.case.Case`).

    Args:
        case: ``image`` (4, X, Y, Z) RAS, ``label`` (X, Y, Z) or None, ``geometry.spacing`` (mm).
        input_size: side of the model's square slices, pixels (the model card's input size).
        margin_mm: in-plane margin around the brain's bounding box, mm (default 4).
        with_labels: also resample ``case.label`` (False: ``labels`` is None, e.g. for inference).
    """
    if input_size < 8:
        raise InvalidInput(f"input_size must be at least 8 pixels, got {input_size}")
    image = np.asarray(case.image)
    spacing = tuple(float(s) for s in case.geometry.spacing)
    mask = brain_mask(image)
    x0, x1, y0, y1, z0, z1 = box = crop_box(mask, spacing, margin_mm)
    crop, crop_mask = image[:, x0:x1, y0:y1, z0:z1], mask[x0:x1, y0:y1, z0:z1]
    pad, padded = _square_pad(x1 - x0, y1 - y0, spacing[0], spacing[1])
    res = _resampled_raw(crop, crop_mask, pad, padded, input_size)
    slices, mean, std = _zscored(res), res.mean, res.std
    labels = None
    if with_labels and case.label is not None:
        size = (input_size, input_size)
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
    return PreparedCase(slices=slices, labels=labels, brain_mask=mask, record=record)


@dataclass(frozen=True)
class _Band:
    """Output samples ``[i0, i1)`` of a resampling along one axis read only the source samples
    ``[lo, hi)``, with the weights ``w (i1 - i0, hi - lo)``."""

    i0: int
    i1: int
    lo: int
    hi: int
    w: torch.Tensor

    def clipped(self, a: int, b: int) -> tuple[int, int, torch.Tensor] | None:
        """The band's sources inside ``[a, b)`` and their weights (None: no source there)."""
        lo, hi = max(self.lo, a), min(self.hi, b)
        return None if lo >= hi else (lo, hi, self.w[:, lo - self.lo : hi - self.lo])


# Outputs per band: wider bands waste products (their source window grows), narrower ones cost
# calls; 16 was the fastest of 4-32 on CPU for the 1 mm benchmark case's 199 -> 96 samples.
_BAND_ROWS = 16


@functools.lru_cache(maxsize=64)
def antialias_bands(n_in: int, n_out: int, rows: int = _BAND_ROWS) -> tuple[_Band, ...]:
    """torch's antialiased bilinear weights from ``n_in`` to ``n_out`` samples
    (:func:`_identity_weights`), cut into bands of ``rows`` outputs.

    Each output has a few nonzero weights at consecutive sources, so a band is a small dense
    block of the banded ``(n_out, n_in)`` matrix: resampling is one small product per band.
    """
    w = _identity_weights(n_in, n_out, antialias=True)
    used = (w != 0).numpy()
    bands = []
    for i0 in range(0, n_out, rows):
        i1 = min(n_out, i0 + rows)
        src = np.flatnonzero(used[i0:i1].any(axis=0))
        bands.append(_Band(i0, i1, int(src[0]), int(src[-1]) + 1, w[i0:i1, src[0] : src[-1] + 1].clone()))
    return tuple(bands)


class _Resampled(NamedTuple):
    """:func:`_resampled_raw`'s output: ``raw (Z', C + 1, S, S)`` (``[x, y]`` per slice) and the
    per-channel ``offset`` (float32 values) subtracted inside the brain before resampling, with
    the brain's ``mean`` and ``std`` (float64 statistics of the native-grid voxels)."""

    raw: torch.Tensor
    offset: tuple[float, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _resampled_raw(
    crop: np.ndarray, crop_mask: np.ndarray, pad, padded, input_size: int, chunk: int = 16
) -> _Resampled:
    """Steps 4-5 on the cropped image ``(C, cx, cy, Z')`` and its brain mask ``M``, with step 3's
    statistics gathered on the way.

    ``raw[:, c]`` is ``R(v_c - offset_c * M)`` (``R``: pad + resample), ``raw[:, C]`` is
    ``R(M)``. Resampling is linear and the image is 0 outside the mask (the mask is where any
    channel is nonzero), so the z-scored slices of the definition ``R((v - mean) * M / std)``
    are ``(raw_c - (mean - offset) * R(M)) / std`` (:func:`_zscored`): no z-scored copy of the
    native-grid volume, nothing in float64 per voxel. The offset (a float32 guess of the mean,
    from the first chunk with brain) keeps the resampled values near 0, so an intensity scale
    far from 0 loses no digits in float32.

    ``chunk`` axial slices at a time are copied into one reused ``(chunk, C + 1, h, w)`` buffer
    (``[y, x]``, x fastest: the loaders' memory order, so the copy reads whole rows; ``h, w``:
    the chunk's y and x extent with brain), where the offset is subtracted (fused with the copy)
    and the statistics are summed (float32 within a slice, float64 across slices; NumPy's loops,
    so the bits do not depend on torch's thread count). The antialiased bilinear resampling is
    separable, with torch's own weights (:func:`antialias_bands`): along x, one batched product
    per band of output columns, written transposed; along y, one product per band of output
    rows with all slices and channels as the rows of one matrix. Only the sources that hold
    brain enter (the padding and the rows and columns without brain are 0), and the result is
    in the model's ``[x, y]`` order. The buffer's layout is fixed, so every memory order of the
    input gives the same bits.
    """
    n_ch, cx, cy, nz = crop.shape
    px0, py0 = pad[0], pad[2]
    nx, ny = padded
    size, nc = input_size, n_ch + 1
    bands_x, bands_y = antialias_bands(nx, size), antialias_bands(ny, size)
    # (Z', C, cy, cx) views, no copy (torch takes no negative strides: a reversed view is copied)
    image, mask = (torch.from_numpy(a if min(a.strides) >= 0 else a.copy()) for a in (crop, crop_mask))
    image, mask = image.permute(3, 0, 2, 1), mask.permute(2, 1, 0)
    cols_with_brain, rows_with_brain = crop_mask.any(axis=1), crop_mask.any(axis=0)  # (cx|cy, Z')
    # reused buffers; every chunk writes all of its part of them (zeros where nothing lands)
    flat = torch.empty(min(chunk, nz) * nc * cy * cx)
    flat_x = torch.empty(min(chunk, nz) * nc * size * cy)
    raw = torch.empty((nz, nc, size, size))
    n_tot, offset, s1, s2 = 0, None, np.zeros(n_ch), np.zeros(n_ch)
    with torch.inference_mode():
        for s in range(0, nz, chunk):
            k = min(chunk, nz - s)
            xs = np.flatnonzero(cols_with_brain[:, s : s + k].any(axis=1))
            if xs.size == 0:  # slices without brain inside the z range: all 0, as resampled
                raw[s : s + k] = 0.0
                continue
            ys = np.flatnonzero(rows_with_brain[:, s : s + k].any(axis=1))
            x0, x1, y0, y1 = int(xs[0]), int(xs[-1]) + 1, int(ys[0]), int(ys[-1]) + 1
            h, w = y1 - y0, x1 - x0
            buf = flat[: k * nc * h * w].view(k, nc, h, w)
            vals, brain = buf[:, :n_ch], buf[:, n_ch:]
            brain[:, 0].copy_(mask[s : s + k, y0:y1, x0:x1])
            src = image[s : s + k, :, y0:y1, x0:x1]
            n = int(np.count_nonzero(crop_mask[x0:x1, y0:y1, s : s + k]))
            per_slice = buf.numpy().reshape(k, nc, -1)[:, :n_ch]  # (k, C, h * w) view
            if offset is None:
                vals.copy_(src)
                offset = torch.from_numpy(np.add.reduce(per_slice, axis=(0, 2)) / np.float32(n))
                offset = offset.view(1, n_ch, 1, 1)
                src = vals
            torch.addcmul(src, brain, offset, value=-1.0, out=vals)  # v - offset in the brain
            # NumPy's single-threaded sums (the same bits on any thread count), float32 per slice
            s1 += np.add.reduce(per_slice, axis=2).sum(axis=0, dtype=np.float64)
            s2 += np.einsum("kcn,kcn->kc", per_slice, per_slice).sum(axis=0, dtype=np.float64)
            n_tot += n
            # along x: (k * (C + 1), S_x, h), a batched product per band of output columns
            along_x = flat_x[: k * nc * size * h].view(k * nc, size, h)
            src3 = buf.view(k * nc, h, w)
            for b in bands_x:
                if (part := b.clipped(px0 + x0, px0 + x1)) is None:
                    along_x[:, b.i0 : b.i1] = 0.0
                    continue
                lo, hi, wts = part
                a = src3[:, :, lo - px0 - x0 : hi - px0 - x0].transpose(1, 2)
                torch.bmm(wts.expand(k * nc, -1, -1), a, out=along_x[:, b.i0 : b.i1])
            # along y: all slices, channels and x samples as rows of one matrix
            rows2 = along_x.view(-1, h)
            out = raw[s : s + k].view(-1, size)
            for b in bands_y:
                if (part := b.clipped(py0 + y0, py0 + y1)) is None:
                    out[:, b.i0 : b.i1] = 0.0
                    continue
                lo, hi, wts = part
                out[:, b.i0 : b.i1] = rows2[:, lo - py0 - y0 : hi - py0 - y0] @ wts.t()
    off = offset.view(-1).double().numpy()
    shift = s1 / n_tot  # mean - offset
    std = np.sqrt(np.maximum(s2 / n_tot - shift * shift, 0.0))
    return _Resampled(
        raw,
        tuple(float(v) for v in off),
        tuple(float(v) for v in off + shift),
        tuple(float(v) if v > 1e-8 else 1.0 for v in std),
    )


def _zscored(res: _Resampled) -> torch.Tensor:
    """Step 3 on :func:`_resampled_raw`'s slices: ``(Z', C, S, S)`` float32,
    ``(raw_c - (mean - offset) * R(M)) / std`` per channel."""
    raw = res.raw
    n_ch = raw.shape[1] - 1
    scale = torch.tensor([1.0 / s for s in res.std], dtype=torch.float32).view(1, n_ch, 1, 1)
    shift = [(o - m) / s for m, o, s in zip(res.mean, res.offset, res.std, strict=True)]
    out = torch.mul(raw[:, :n_ch], scale)  # a plain tensor (not an inference one): trainable on
    return out.addcmul_(raw[:, n_ch:], torch.tensor(shift, dtype=torch.float32).view(1, n_ch, 1, 1))
