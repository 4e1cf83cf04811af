"""Builders for I/O tests: small synthetic cases written with nibabel on oblique, anisotropic grids."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from medseglens_core.io import MODALITIES

SHAPE = (12, 10, 8)
SUFFIX_2023 = {"t1n": "-t1n", "t1c": "-t1c", "t2w": "-t2w", "t2f": "-t2f", "seg": "-seg"}
SUFFIX_2021 = {"t1n": "_t1", "t1c": "_t1ce", "t2w": "_t2", "t2f": "_flair", "seg": "_seg"}
PATIENT_TEXT = b"DOE^JANE 1970-01-01"


def oblique_lps_affine() -> np.ndarray:
    """LPS voxel axes, anisotropic (0.9, 1.2, 2.5 mm), rotated ~20 deg about z and ~10 deg about x."""
    a, b = np.deg2rad(20.0), np.deg2rad(10.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    aff = np.eye(4)
    aff[:3, :3] = rz @ rx @ np.diag([-0.9, -1.2, 2.5])
    aff[:3, 3] = [100.0, 80.0, -50.0]
    return aff


def make_arrays(seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Four float32 modalities (distinct per channel) and a BraTS 2023 label map with all labels."""
    rng = np.random.default_rng(seed)
    images = {
        m: (rng.random(SHAPE, dtype=np.float32) + 10 * i).astype(np.float32) for i, m in enumerate(MODALITIES)
    }
    label = np.zeros(SHAPE, np.uint8)
    label[3:9, 2:8, 2:6] = 2
    label[4:8, 3:7, 3:5] = 3
    label[5:7, 4:6, 3:5] = 1
    return images, label


def save(arr: np.ndarray, affine: np.ndarray, path: Path, *, descrip: bytes = PATIENT_TEXT) -> Path:
    """Write ``arr`` with nibabel, sform and qform set, a patient-like text in ``descrip``."""
    img = nib.Nifti1Image(arr, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header["descrip"] = descrip
    img.header["db_name"] = b"db-secret"
    nib.save(img, path)
    return path
