"""Turn tissue fractions into four MR pseudo-modalities: contrast table, bias field, thick slices,
Rician noise and scanner gain. Arrays are float32 on the anatomy work box, ``[x, y, z]``."""

from __future__ import annotations

import numpy as np

from medseglens_core.data.cohorts import TISSUES, CohortParams
from medseglens_core.data.synthetic.anatomy import Anatomy, smooth_field
from medseglens_core.data.synthetic.lesion import Lesion

_BIAS_FREQ = 4  # cosine half-cycles 0..3 per axis: at most 1.5 cycles across the head
_BIAS_OWN = 0.3  # share of each sequence's own bias field next to the shared one


def subject_table(params: CohortParams, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """This subject's relative intensity per tissue: ``{tissue: (4,) float32}`` in MODALITIES order.

    Applies per-entry jitter, then the cohort's GM/WM contrast scale (about the GM/WM mean) and
    oedema contrast scale (about WM).
    """
    table = {t: np.asarray(params.intensities[t], dtype=np.float64) for t in TISSUES}
    table = {t: v * (1 + params.intensity_jitter * rng.standard_normal(4)) for t, v in table.items()}
    mean = (table["gm"] + table["wm"]) / 2
    wm = mean + params.gm_wm_contrast * (table["wm"] - mean)
    gm = mean + params.gm_wm_contrast * (table["gm"] - mean)
    snfh = wm + np.asarray(params.oedema_contrast) * (table["snfh"] - table["wm"])
    table.update(gm=gm, wm=wm, snfh=snfh)
    return {t: np.clip(v, 0.01, None).astype(np.float32) for t, v in table.items()}


def compose(anat: Anatomy, table: dict[str, np.ndarray], lesion: Lesion | None) -> np.ndarray:
    """Noise-free relative images ``(4, bx, by, bz)`` float32 from tissue fractions and the lesion.

    Oedema replaces a share ``lesion.oedema`` of the parenchyma's (GM + WM) signal by the SNFH
    value; the tumour core replaces a share ``lesion.core`` of everything by its NCR/ET mix.
    """
    out = np.empty((4, *anat.mask.shape), dtype=np.float32)
    for m in range(4):
        out[m] = anat.csf * table["csf"][m] + anat.gm * table["gm"][m] + anat.wm * table["wm"][m]
    if lesion is None:
        return out
    b = lesion.box
    gm, wm = anat.gm[b], anat.wm[b]
    a, core, w_et = lesion.oedema, lesion.core, lesion.et_weight
    for m in range(4):
        region = out[m][b]
        region -= a * (gm * (table["gm"][m] - table["snfh"][m]) + wm * (table["wm"][m] - table["snfh"][m]))
        tumour = w_et * table["et"][m] + (1 - w_et) * table["ncr"][m]
        region *= 1 - core
        region += core * tumour
    return out


def apply_bias(
    images: np.ndarray, anat: Anatomy, full_shape: tuple[int, int, int], strength: float, rng
) -> None:
    """Multiply each modality in place by ``exp(b)``, ``b`` a smooth field with sd ``strength``
    (shared across sequences plus a ``_BIAS_OWN`` share of each sequence's own field)."""
    if strength <= 0:
        return
    # The fields are linear in their coefficients: mix shared and own coefficients, evaluate 4 fields.
    c = rng.standard_normal((5, _BIAS_FREQ, _BIAS_FREQ, _BIAS_FREQ))
    fields = smooth_field(rng, full_shape, anat.box, _BIAS_FREQ, n_fields=4, coef=c[0] + _BIAS_OWN * c[1:])
    for m in range(4):
        log_b = fields[m]
        log_b *= np.float32(strength)
        np.exp(log_b, out=log_b)
        images[m] *= log_b


def thick_slice_matrix(z0: int, nz: int, res: float, thickness: float, offset: float) -> np.ndarray:
    """``(nz, nz)`` matrix that averages a z-profile over slabs ``thickness`` mm thick (centres every
    ``thickness`` mm starting at ``offset`` mm) and linearly interpolates back to the voxel centres.

    Voxel ``k`` of the box sits at ``(z0 + k) * res`` mm.
    """
    z = (z0 + np.arange(nz)) * res
    first = offset + np.floor((z[0] - offset) / thickness) * thickness
    centres = np.arange(first, z[-1] + thickness, thickness)
    lo = np.maximum(z[None, :] - res / 2, centres[:, None] - thickness / 2)
    hi = np.minimum(z[None, :] + res / 2, centres[:, None] + thickness / 2)
    acq = np.clip(hi - lo, 0, None)  # (slabs, nz) overlap in mm
    keep = acq.sum(axis=1) > 1e-9  # slabs that overlap the box at all
    acq, centres = acq[keep], centres[keep]
    acq /= acq.sum(axis=1, keepdims=True)
    pos = np.clip((z - centres[0]) / thickness, 0, len(centres) - 1)
    j = np.minimum(np.floor(pos).astype(int), len(centres) - 2) if len(centres) > 1 else np.zeros(nz, int)
    w = pos - j
    back = np.zeros((nz, len(centres)))
    back[np.arange(nz), j] += 1 - w
    if len(centres) > 1:
        back[np.arange(nz), j + 1] += w
    return (back @ acq).astype(np.float32)


def apply_thick_slices(images: np.ndarray, z0: int, res: float, thickness: float, rng) -> None:
    """Simulate thick-slice acquisition along z and resampling back (in place, all modalities)."""
    nz = images.shape[-1]
    mat = thick_slice_matrix(z0, nz, res, thickness, float(rng.uniform(0, thickness)))
    for m in range(images.shape[0]):
        flat = images[m].reshape(-1, nz)
        images[m] = (flat @ mat.T).reshape(images[m].shape)


def add_noise_and_gain(
    images: np.ndarray, mask: np.ndarray, snr: float, gain: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Rician magnitude noise (Gaussian sigma ``1/snr`` on real and imaginary parts) inside ``mask``,
    then per-modality ``gain``; background 0 (skull-stripped). Returns float32 ``(4, bx, by, bz)``."""
    sigma = np.float32(1.0 / snr)
    idx = np.flatnonzero(mask)
    out = np.zeros_like(images)
    for m in range(images.shape[0]):
        re = images[m].ravel()[idx]
        re += sigma * rng.standard_normal(idx.size, dtype=np.float32)
        im = rng.standard_normal(idx.size, dtype=np.float32)
        im *= sigma
        re *= re
        im *= im
        re += im
        np.sqrt(re, out=re)
        re *= np.float32(gain[m])
        out[m].ravel()[idx] = re
    return out
