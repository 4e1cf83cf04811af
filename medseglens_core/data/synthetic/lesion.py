"""One glioma per subject: an irregular core (NCR + ET rim) and SNFH oedema that spreads along
white matter.

The continuous fields (core depth, oedema path length) are computed on a 2 mm grid over a box
around the tumour and linearly upsampled to the output grid, where they are thresholded into
labels and turned into soft tissue fractions (partial volume at the borders).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from medseglens_core.data.cohorts import CohortParams, InvalidCohortParams
from medseglens_core.data.synthetic.anatomy import Anatomy, Templates

COARSE_MM = 2.0  # grid step of the lesion's continuous fields
_BLOCKED = np.float32(1e4)  # path cost (mm) of one step into CSF / outside the brain
_FADE = 0.6  # oedema signal falls from 1 at the core to 1 - _FADE at its front


@dataclass
class Lesion:
    """The lesion inside ``box`` (slices of the anatomy work box). Arrays are ``(bx, by, bz)``."""

    box: tuple[slice, slice, slice]
    label: np.ndarray  # uint8: 0, 1 NCR, 2 SNFH, 3 ET
    core: np.ndarray  # float32 soft fraction of tumour core (NCR + ET) in each voxel
    et_weight: np.ndarray  # float32 share of ET (vs NCR) within the core
    oedema: np.ndarray  # float32 oedema signal weight: soft fraction * strength * fade
    info: dict[str, Any] = field(default_factory=dict)


def _draw(rng: np.random.Generator, rng_pair: tuple[float, float]) -> float:
    return float(rng.uniform(rng_pair[0], rng_pair[1]))


def _location_ok(name: str, mm: np.ndarray) -> np.ndarray:
    x, y, z = mm
    if name == "supratentorial":
        return (z > -5) & (np.abs(x) > 12)
    if name == "posterior_fossa":
        return (z < -18) & (y < -30)
    # midline: thalamus / brainstem
    return (np.abs(x) < 10) & (y > -35) & (y < 5) & (z > -35) & (z < 15)


def _pick_centre(
    anat: Anatomy, tpl: Templates, rng: np.random.Generator, location: str, radius: float
) -> np.ndarray:
    """A tumour centre (work-box voxel coordinates) in ``location``, in parenchyma and at least
    half a radius from the brain surface."""
    res = tpl.resolution
    step = max(1, round(4 / res))
    sub = (slice(None, None, step),) * 3
    mask = anat.mask[sub]
    idx = np.stack(np.meshgrid(*[np.arange(n) * step for n in mask.shape], indexing="ij"))
    full = idx + np.array([s.start for s in anat.box]).reshape(3, 1, 1, 1)
    # Template coordinates: undo this head's scale (the small displacement is ignored).
    tvox = anat.centre.reshape(3, 1, 1, 1) + (full - anat.centre.reshape(3, 1, 1, 1)) / anat.scale
    mm = tpl.affine[:3, :3] @ tvox.reshape(3, -1) + tpl.affine[:3, 3:4]
    depth = ndi.distance_transform_edt(mask, sampling=step * res).ravel()
    tissue = (anat.wm[sub] if location == "supratentorial" else anat.gm[sub] + anat.wm[sub]).ravel()
    where = _location_ok(location, mm) & mask.ravel() & (tissue > 0.5)
    for min_depth in (0.5 * radius, 0.25 * radius, 0.0):
        cand = np.flatnonzero(where & (depth > min_depth))
        if cand.size:
            return idx.reshape(3, -1)[:, rng.choice(cand)].astype(np.float64)
    raise InvalidCohortParams(
        f"no brain voxel fits tumour location {location!r}; check the cohort's locations"
    )


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: float) -> np.ndarray:
    n = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma_vox, mode="reflect")
    return (n - n.mean()) / max(float(n.std()), 1e-6)


def _geodesic(seed: np.ndarray, step_cost: np.ndarray, n_iter: int) -> np.ndarray:
    """Path length from ``seed`` where entering a voxel costs ``step_cost`` (6-neighbour relaxation)."""
    t = np.where(seed, np.float32(0), np.float32(np.inf)).astype(np.float32)
    for _ in range(n_iter):
        for ax in range(3):
            n = t.shape[ax]
            a = [slice(None)] * 3
            b = [slice(None)] * 3
            a[ax], b[ax] = slice(1, n), slice(0, n - 1)
            ta, tb = tuple(a), tuple(b)
            np.minimum(t[ta], t[tb] + step_cost[ta], out=t[ta])
            np.minimum(t[tb], t[ta] + step_cost[tb], out=t[tb])
    return t


def _upsample(coarse: np.ndarray, factor: int, shape: tuple[int, int, int]) -> np.ndarray:
    """Linear upsampling with coarse sample k at fine index k * factor; edges padded to ``shape``."""
    if factor == 1:
        return coarse[: shape[0], : shape[1], : shape[2]]
    target = tuple((n - 1) * factor + 1 for n in coarse.shape)
    fine = ndi.zoom(
        coarse, [t / n for t, n in zip(target, coarse.shape, strict=True)], order=1, grid_mode=False
    )
    pad = [(0, max(0, s - f)) for s, f in zip(shape, fine.shape, strict=True)]
    return np.pad(fine, pad, mode="edge")[: shape[0], : shape[1], : shape[2]]


def make_lesion(anat: Anatomy, tpl: Templates, params: CohortParams, rng: np.random.Generator) -> Lesion:
    """Draw one tumour for this subject following ``params`` (see :class:`CohortParams`)."""
    res = tpl.resolution
    names = [loc for loc, _ in params.locations]
    weights = np.array([w for _, w in params.locations], dtype=np.float64)
    location = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    radius = _draw(rng, params.tumour_radius_mm)
    enhancing = bool(rng.random() < params.p_enhancing)
    thickness = _draw(rng, params.et_thickness_mm)
    coverage = _draw(rng, params.et_coverage)
    extent = _draw(rng, params.oedema_extent_mm)
    strength = _draw(rng, params.oedema_strength)
    centre = _pick_centre(anat, tpl, rng, location, radius)

    # Coarse box (2 mm) around the centre, aligned to the work grid.
    f = max(1, round(COARSE_MM / res))
    half = radius * (1 + params.irregularity) + 1.3 * extent + 6.0
    wshape = anat.mask.shape
    lo = np.maximum(np.floor(centre - half / res).astype(int), 0)
    n_c = (np.minimum(np.ceil(centre + half / res).astype(int), np.array(wshape) - 1) - lo) // f + 1
    cs = tuple(slice(int(a), int(a + (n - 1) * f + 1), f) for a, n in zip(lo, n_c, strict=True))
    gm_c, wm_c, mask_c = anat.gm[cs], anat.wm[cs], anat.mask[cs]
    grids = np.meshgrid(
        *[(np.arange(n) * f + a - c) * res for n, a, c in zip(n_c, lo, centre, strict=True)], indexing="ij"
    )
    r = np.sqrt(sum(g * g for g in grids))
    step = f * res
    depth_c = radius * (1 - r / radius + params.irregularity * _smooth_noise(rng, r.shape, 6.0 / step))
    core_c = (depth_c > 0) & mask_c

    speed = wm_c + params.oedema_gm_speed * gm_c
    cost = np.where(mask_c & (speed > 0.1), step / np.maximum(speed, 0.1), _BLOCKED).astype(np.float32)
    front = extent * (1 + 0.25 * _smooth_noise(rng, r.shape, 8.0 / step))
    path = _geodesic(core_c, cost, math.ceil(1.3 * extent / step) + 2)
    path = ndi.gaussian_filter(np.minimum(path, 3 * extent + step), 0.7)
    oed_c = front - path  # mm inside the oedema front
    et_noise = _smooth_noise(rng, r.shape, 5.0 / step)

    # Tight fine box around what the lesion occupies.
    occupied = np.argwhere((depth_c > -step) | (oed_c > -step))
    if occupied.size == 0:
        occupied = np.argwhere(r <= r.min())
    clo = np.maximum(occupied.min(axis=0) - 1, 0)
    chi = np.minimum(occupied.max(axis=0) + 1, np.array(r.shape) - 1)
    sub_c = tuple(slice(int(a), int(b) + 1) for a, b in zip(clo, chi, strict=True))
    flo = lo + clo * f
    fshape = tuple(int(x) for x in np.minimum((chi - clo) * f + 1, np.array(wshape) - flo))
    box = tuple(slice(int(a), int(a) + n) for a, n in zip(flo, fshape, strict=True))

    depth = _upsample(depth_c[sub_c], f, fshape)
    oed = _upsample(oed_c[sub_c], f, fshape)
    pathf = _upsample(np.minimum(path, 3 * extent)[sub_c], f, fshape)
    etn = _upsample(et_noise[sub_c], f, fshape)
    mask = anat.mask[box]
    parenchyma = anat.gm[box] + anat.wm[box]

    core_hard = (depth > 0) & mask
    core = (np.clip(depth / res + 0.5, 0, 1) * mask).astype(np.float32)
    et_weight = np.zeros(fshape, dtype=np.float32)
    et_hard = np.zeros(fshape, dtype=bool)
    if enhancing:
        rim = core_hard & (depth < thickness)
        thr = float(np.quantile(etn[rim], 1 - coverage)) if rim.any() else 0.0
        et_hard = rim & (etn >= thr)
        et_weight = (
            np.clip((thickness - depth) / res + 0.5, 0, 1) * np.clip((etn - thr) / 0.3 + 0.5, 0, 1)
        ).astype(np.float32)
    oed_hard = (oed > 0) & ~core_hard & mask & (parenchyma >= 0.5)
    fade = 1 - _FADE * np.clip(pathf / max(extent, 1e-3), 0, 1)
    oedema = (np.clip(oed / res + 0.5, 0, 1) * strength * fade * (1 - core) * mask).astype(np.float32)

    label = np.zeros(fshape, dtype=np.uint8)
    label[oed_hard] = 2
    label[core_hard] = 1
    label[et_hard] = 3
    info = {
        "location": location,
        "centre_voxel": [int(round(c + s.start)) for c, s in zip(centre, anat.box, strict=True)],
        "radius_mm": round(radius, 2),
        "enhancing": enhancing,
        "et_thickness_mm": round(thickness, 2),
        "et_coverage": round(coverage, 3) if enhancing else 0.0,
        "oedema_extent_mm": round(extent, 2),
        "oedema_strength": round(strength, 3),
    }
    return Lesion(box, label, core, et_weight, oedema, info)
