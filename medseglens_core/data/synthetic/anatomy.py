"""Subject anatomy: the MNI152 templates bundled with nilearn, scaled and smoothly deformed.

Arrays are indexed ``[x, y, z]`` on the template's RAS grid (its affine is diagonal and positive),
so axial slices are ``[:, :, z]``. Work is done on a *work box*: the part of the grid the deformed
brain can occupy, which is about 40% of the full grid and saves that much time.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from medseglens_core.data.cohorts import InvalidCohortParams

#: Output grid spacings (mm) for which nilearn ships MNI152 templates.
RESOLUTIONS: tuple[int, ...] = (1, 2)


@dataclass(frozen=True)
class Templates:
    """MNI152 tissue maps on one grid. Shapes ``(X, Y, Z)``: (197, 233, 189) at 1 mm, (99, 117, 95) at 2 mm."""

    gm: np.ndarray  # float32 grey-matter probability, 0 outside the brain
    wm: np.ndarray  # float32 white-matter probability
    mask: np.ndarray  # float32 brain mask, 0/1
    affine: np.ndarray  # (4, 4) voxel -> MNI mm
    resolution: int  # mm
    centre: np.ndarray  # (3,) brain centroid, voxel coordinates
    bbox: tuple[np.ndarray, np.ndarray]  # (lo, hi) inclusive voxel bounds of the brain mask


@functools.lru_cache(maxsize=len(RESOLUTIONS))
def load_templates(resolution: int) -> Templates:
    """Load (once per process) nilearn's MNI152 GM/WM probability maps and brain mask.

    These files ship inside the nilearn package: nothing is downloaded. CSF is derived by the caller
    as ``mask - gm - wm`` (clipped at 0).
    """
    if resolution not in RESOLUTIONS:
        raise InvalidCohortParams(f"resolution must be one of {RESOLUTIONS} mm, got {resolution!r}")
    from nilearn import datasets

    mask_img = datasets.load_mni152_brain_mask(resolution=resolution)
    mask = (np.asarray(mask_img.dataobj) > 0.5).astype(np.float32)
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=resolution).dataobj, dtype=np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=resolution).dataobj, dtype=np.float32)
    gm = np.clip(gm, 0, 1) * mask
    wm = np.clip(wm, 0, 1) * mask
    total = gm + wm
    over = total > 1
    gm[over] /= total[over]
    wm[over] /= total[over]
    idx = np.nonzero(mask)
    lo = np.array([a.min() for a in idx])
    hi = np.array([a.max() for a in idx])
    centre = np.array([a.mean() for a in idx])
    for arr in (gm, wm, mask):
        arr.setflags(write=False)
    return Templates(gm, wm, mask, mask_img.affine.copy(), resolution, centre, (lo, hi))


def smooth_field(
    rng: np.random.Generator,
    full_shape: tuple[int, int, int],
    box: tuple[slice, slice, slice],
    n_freq: int,
    n_fields: int = 1,
    coef: np.ndarray | None = None,
) -> np.ndarray:
    """Random smooth fields from a 3-D cosine basis, evaluated on ``box`` of a ``full_shape`` grid.

    Frequencies ``0..n_freq-1`` half-cycles per axis across the full grid, unit-normal coefficients
    (or the given ``coef``, shape ``(n_fields, n_freq, n_freq, n_freq)``; its constant term is
    zeroed). Returns float32 ``(n_fields, bx, by, bz)`` with each field scaled to unit standard
    deviation over the box (estimated on every 4th voxel per axis). Separable evaluation:
    O(voxels * n_freq).
    """
    bases = []
    for ax in range(3):
        x = np.arange(box[ax].start, box[ax].stop, dtype=np.float64) + 0.5
        k = np.arange(n_freq, dtype=np.float64)
        bases.append(np.cos(np.pi * np.outer(x, k) / full_shape[ax]).astype(np.float32))
    bx, by, bz = bases
    if coef is None:
        coef = rng.standard_normal((n_fields, n_freq, n_freq, n_freq))
    coef = np.array(coef, dtype=np.float32)
    coef[:, 0, 0, 0] = 0.0  # no pure offset: fields are fluctuations around 0
    out = np.empty((n_fields, len(bx), len(by), len(bz)), dtype=np.float32)
    for f in range(n_fields):
        # Three small GEMMs (BLAS) instead of one 4-operand einsum.
        t = np.tensordot(bx, coef[f], axes=(1, 0))  # (X, j, k)
        t = np.tensordot(t, by, axes=(1, 1))  # (X, k, Y)
        out[f] = np.tensordot(t, bz, axes=(1, 1))  # (X, Y, Z)
        out[f] *= np.float32(1.0 / max(float(out[f, ::4, ::4, ::4].std()), 1e-6))
    return out


@dataclass
class Anatomy:
    """One subject's deformed tissue maps on the work box (all float32 ``(bx, by, bz)``)."""

    box: tuple[slice, slice, slice]  # where the work box sits in the full grid
    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    mask: np.ndarray  # bool brain mask (skull-stripping mask of the output images)
    scale: float  # head scale relative to MNI152
    centre: np.ndarray  # (3,) scaling centre, full-grid voxel coordinates


def deform_anatomy(
    tpl: Templates, rng: np.random.Generator, scale: float, deform_mm: float, n_freq: int = 4
) -> Anatomy:
    """Scale the brain about its centroid by ``scale`` and warp it with a smooth random displacement
    (``deform_mm`` standard deviation per component, up to ``(n_freq-1)/2`` cycles per axis).

    Output voxel ``v`` takes the template value at ``c + (v - c) / scale + d(v) / resolution``
    (linear interpolation, ``scipy.ndimage.map_coordinates`` order 1).
    """
    shape = tpl.mask.shape
    res = tpl.resolution
    lo, hi = tpl.bbox
    margin = 3.0 * deform_mm / res + 2
    box_lo = np.floor(tpl.centre + scale * (lo - tpl.centre) - margin).astype(int)
    box_hi = np.ceil(tpl.centre + scale * (hi - tpl.centre) + margin).astype(int) + 1
    box_lo = np.maximum(box_lo, 0)
    box_hi = np.minimum(box_hi, shape)
    box = tuple(slice(int(a), int(b)) for a, b in zip(box_lo, box_hi, strict=True))

    disp = smooth_field(rng, shape, box, n_freq, n_fields=3)
    disp *= np.float32(deform_mm / res)
    inv = np.float32(1.0 / scale)
    coords = np.empty((3, *disp.shape[1:]), dtype=np.float32)
    for ax in range(3):
        v = np.arange(box[ax].start, box[ax].stop, dtype=np.float32)
        c = np.float32(tpl.centre[ax])
        shape_b = [1, 1, 1]
        shape_b[ax] = -1
        coords[ax] = (c + (v - c) * inv).reshape(shape_b) + disp[ax]
    del disp

    mask_w = ndi.map_coordinates(tpl.mask, coords, order=1, mode="constant", cval=0.0, output=np.float32)
    inside = mask_w >= 0.5
    pts = coords[:, inside]
    gm = np.zeros(inside.shape, dtype=np.float32)
    wm = np.zeros(inside.shape, dtype=np.float32)
    gm[inside] = ndi.map_coordinates(tpl.gm, pts, order=1, mode="constant", output=np.float32)
    wm[inside] = ndi.map_coordinates(tpl.wm, pts, order=1, mode="constant", output=np.float32)
    csf = np.where(inside, np.clip(1.0 - gm - wm, 0.0, 1.0), np.float32(0)).astype(np.float32)
    return Anatomy(box, gm, wm, csf, inside, scale, tpl.centre.copy())
