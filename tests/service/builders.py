"""Small synthetic NIfTI cases for service tests (24 x 28 x 20 voxels, 2 mm, planted tumour)."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import nibabel as nib
import numpy as np

MODALITIES = ("t1n", "t1c", "t2w", "t2f")
SHAPE = (24, 28, 20)
AFFINE = np.diag([2.0, 2.0, 2.0, 1.0])
TUMOUR_Z = 13  # the slice with the largest planted tumour cross-section


def arrays(shape: tuple[int, int, int] = SHAPE, seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Four modality arrays (float32) and a label map (uint8) with a sphere of NCR/SNFH/ET at z=13."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    r = np.sqrt((x - 12) ** 2 + (y - 14) ** 2 + (3 * (z - TUMOUR_Z)) ** 2)  # flat in z: one widest slice
    label = np.zeros(shape, np.uint8)
    label[r < 5] = 2
    label[r < 3] = 3
    label[r < 1.5] = 1
    images = {m: (rng.random(shape) * 0.1 + 0.5 + 0.1 * i + 0.2 * (label > 0)).astype(np.float32)
              for i, m in enumerate(MODALITIES)}  # fmt: skip
    return images, label


def nifti_bytes(arr: np.ndarray, affine: np.ndarray = AFFINE, *, gz: bool = True, descrip: str = "") -> bytes:
    """One NIfTI-1 file as bytes (gzipped by default)."""
    img = nib.Nifti1Image(arr, affine)
    if descrip:
        img.header["descrip"] = descrip.encode()
    raw = img.to_bytes()
    return gzip.compress(raw, mtime=0) if gz else raw


def case_files(
    *, label: bool = True, shape: tuple[int, int, int] = SHAPE, seed: int = 0, descrip: str = ""
) -> dict[str, bytes]:
    """Multipart file parts: t1n, t1c, t2w, t2f (and label) as gzipped NIfTI bytes."""
    images, lab = arrays(shape, seed)
    files = {m: nifti_bytes(images[m], descrip=descrip) for m in MODALITIES}
    if label:
        files["label"] = nifti_bytes(lab)
    return files


def image_4d_bytes(order: tuple[str, ...]) -> bytes:
    """One 4-D NIfTI whose 4th axis holds the modalities in ``order``."""
    images, _ = arrays()
    return nifti_bytes(np.stack([images[m] for m in order], axis=-1))


def multipart(files: dict[str, bytes], filenames: dict[str, str] | None = None) -> dict[str, tuple]:
    """``files=`` argument for httpx: each part with a (patient-like) client file name."""
    names = filenames or {}
    return {role: (names.get(role, f"PATIENT-DOE-JOHN-{role}.nii.gz"), data, "application/gzip")
            for role, data in files.items()}  # fmt: skip


def write_files(folder: Path, files: dict[str, bytes]) -> dict[str, Path]:
    """Write parts to ``folder/<role>.nii.gz``."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for role, data in files.items():
        out[role] = folder / f"{role}.nii.gz"
        out[role].write_bytes(data)
    return out


def load_bytes(data: bytes) -> nib.Nifti1Image:
    """Parse NIfTI bytes (gzipped or not) back into an image."""
    raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    return nib.Nifti1Image.from_stream(io.BytesIO(raw))
