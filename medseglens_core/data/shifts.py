"""Acquisition shifts applied on top of BraTS-2023 case folders: a scanner the models never saw.

Each shift changes the four images of a case, never its label map, and is deterministic per
``(seed, kind, case id)``. ``severity`` in (0, 1] scales it (1 = the strongest the kind models).
The brain mask the pipeline derives (any modality nonzero) is kept: voxels outside it stay 0.

Kinds (:data:`SHIFTS`):

- ``rician_noise``: Rician noise at low SNR, sigma = 0.25 x severity x the modality's brain
  99th percentile (magnitude of a complex Gaussian-corrupted signal).
- ``thick_slices``: through-plane blur, each axial slab of 1 + 4 x severity slices replaced by its
  mean (thick-slice acquisition resampled back to the grid).
- ``bright_compression``: the bright end of T2w and FLAIR compressed: above the brain's 70th
  percentile, intensities approach it at (1 - 0.85 x severity) of their slope (oedema loses contrast).
- ``bias_field``: one smooth multiplicative field for all modalities (exp of a random quadratic
  over the field of view, +-0.6 x severity in log space), a receive-coil inhomogeneity.
- ``gain_offset``: per-modality gain in [1 - 0.6 s, 1 + 0.6 s] and offset +-0.3 s of the brain mean.
- ``motion_ghosting``: in-plane motion between phase-encode lines: every 4th k-space line (y) gets
  a random translation phase, giving ghosts along y of strength ~ severity.
- ``modality_swap``: T2w and FLAIR given in each other's place (a mislabelled series); severity
  has no effect.

Folders: :func:`shift_folder` writes ``dst/<case_id>/<case_id>-<modality>.nii.gz`` (+ ``-seg``) on
each source case's own grid and affine, and ``dst/shift.json`` (kind, severity, seed, cases).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from medseglens_core.errors import InvalidInput, NotFound

MODALITIES = ("t1n", "t1c", "t2w", "t2f")

ShiftFn = Callable[[np.ndarray, np.ndarray, float, np.random.Generator], np.ndarray]


def _brain_quantile(channel: np.ndarray, brain: np.ndarray, q: float) -> float:
    vals = channel[brain]
    return float(np.quantile(vals, q)) if vals.size else 0.0


def rician_noise(
    image: np.ndarray, brain: np.ndarray, severity: float, rng: np.random.Generator
) -> np.ndarray:
    out = image.copy()
    for c in range(image.shape[0]):
        sigma = 0.25 * severity * _brain_quantile(image[c], brain, 0.99)
        re = image[c] + rng.normal(0.0, sigma, image[c].shape)
        im = rng.normal(0.0, sigma, image[c].shape)
        out[c] = np.sqrt(re * re + im * im)
    return out


def thick_slices(
    image: np.ndarray, brain: np.ndarray, severity: float, rng: np.random.Generator
) -> np.ndarray:
    slab = 1 + int(round(4 * severity))
    out = image.copy()
    z = image.shape[3]
    for z0 in range(0, z, slab):
        out[..., z0 : z0 + slab] = image[..., z0 : z0 + slab].mean(axis=3, keepdims=True)
    return out


def bright_compression(
    image: np.ndarray, brain: np.ndarray, severity: float, rng: np.random.Generator
) -> np.ndarray:
    out = image.copy()
    slope = 1.0 - 0.85 * severity
    for c in (MODALITIES.index("t2w"), MODALITIES.index("t2f")):
        knee = _brain_quantile(image[c], brain, 0.70)
        above = image[c] > knee
        out[c][above] = knee + (image[c][above] - knee) * slope
    return out


def bias_field(image: np.ndarray, brain: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
    axes = [np.linspace(-1.0, 1.0, n) for n in image.shape[1:]]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    terms = [x, y, z, x * y, x * z, y * z, x * x, y * y, z * z]
    coef = rng.uniform(-1.0, 1.0, len(terms))
    log_field = sum(a * t for a, t in zip(coef, terms, strict=True))
    log_field *= 0.6 * severity / max(float(np.abs(log_field).max()), 1e-6)
    return image * np.exp(log_field)[None]


def gain_offset(
    image: np.ndarray, brain: np.ndarray, severity: float, rng: np.random.Generator
) -> np.ndarray:
    out = image.copy()
    for c in range(image.shape[0]):
        mean = float(image[c][brain].mean()) if brain.any() else 0.0
        gain = 1.0 + rng.uniform(-0.6, 0.6) * severity
        offset = rng.uniform(-0.3, 0.3) * severity * mean
        out[c] = np.maximum(image[c] * gain + offset, 0.0)
    return out


def motion_ghosting(
    image: np.ndarray, brain: np.ndarray, severity: float, rng: np.random.Generator
) -> np.ndarray:
    ny = image.shape[2]
    ky = np.fft.fftfreq(ny)
    lines = np.zeros(ny, dtype=bool)
    lines[rng.integers(0, 4) :: 4] = True
    shift = rng.uniform(2.0, 6.0) * severity * (1 if rng.random() < 0.5 else -1)  # voxels along y
    phase = np.where(lines, np.exp(-2j * np.pi * ky * shift), 1.0)
    k = np.fft.fft(image, axis=2)
    return np.abs(np.fft.ifft(k * phase[None, None, :, None], axis=2))


def modality_swap(
    image: np.ndarray, brain: np.ndarray, severity: float, rng: np.random.Generator
) -> np.ndarray:
    out = image.copy()
    a, b = MODALITIES.index("t2w"), MODALITIES.index("t2f")
    out[a], out[b] = image[b], image[a]
    return out


SHIFTS: dict[str, ShiftFn] = {
    "rician_noise": rician_noise,
    "thick_slices": thick_slices,
    "bright_compression": bright_compression,
    "bias_field": bias_field,
    "gain_offset": gain_offset,
    "motion_ghosting": motion_ghosting,
    "modality_swap": modality_swap,
}


def _check(kind: str, severity: float) -> ShiftFn:
    if kind not in SHIFTS:
        raise InvalidInput(f"unknown shift kind {kind!r}; choose one of: {', '.join(SHIFTS)}")
    if not 0.0 < severity <= 1.0:
        raise InvalidInput(f"severity must be in (0, 1], got {severity}")
    return SHIFTS[kind]


def case_rng(seed: int, kind: str, case_id: str) -> np.random.Generator:
    """The generator of one (seed, kind, case): independent of the order cases are processed in."""
    return np.random.default_rng([seed, zlib.crc32(kind.encode()), zlib.crc32(case_id.encode())])


def apply_shift(case: Any, kind: str, *, severity: float = 1.0, seed: int = 0) -> np.ndarray:
    """The shifted ``(4, X, Y, Z)`` float32 image of ``case`` (an ``io.Case``); labels untouched."""
    fn = _check(kind, severity)
    image = np.asarray(case.image, dtype=np.float64)
    brain = np.any(image != 0, axis=0)
    out = fn(image, brain, severity, case_rng(seed, kind, case.case_id))
    out[:, ~brain] = 0.0  # the derived brain mask, hence the crop, stays the same
    return out.astype(np.float32)


def shift_folder(
    kind: str, src: str | Path, dst: str | Path, *, severity: float = 1.0, seed: int = 0
) -> list[str]:
    """Apply ``kind`` to every case folder under ``src``; write them under ``dst``; returns case ids.

    Nothing is written when the kind is unknown, ``src`` holds no case, or ``dst`` exists and is
    not empty; cases are written to a staging folder beside ``dst`` and moved into place at the end.
    """
    from medseglens_core.io import find_cases, load_case, write_label_map, write_volume

    _check(kind, severity)
    cases = find_cases(src)
    if not cases:
        raise NotFound(f"'{Path(src).name}' holds no BraTS case folder (<id>-t1n.nii.gz ... <id>-t2f.nii.gz)")
    dst = Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise InvalidInput(f"'{dst.name}' exists and is not empty; choose a new output folder")
    dst.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        ids = []
        for folder in cases:
            case = load_case(folder)
            shifted = apply_shift(case, kind, severity=severity, seed=seed)
            out = staging / case.case_id
            out.mkdir()
            for i, m in enumerate(MODALITIES):
                write_volume(shifted[i], case.geometry, out / f"{case.case_id}-{m}.nii.gz")
            if case.label is not None:
                write_label_map(case.label, case.geometry, out / f"{case.case_id}-seg.nii.gz")
            ids.append(case.case_id)
        manifest = {"kind": kind, "severity": severity, "seed": seed, "source": Path(src).name, "cases": ids}
        (staging / "shift.json").write_text(json.dumps(manifest, indent=1) + "\n")
        if dst.exists():
            dst.rmdir()
        os.replace(staging, dst)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return ids
