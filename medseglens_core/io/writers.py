"""Writing arrays back onto the input's ORIGINAL grid and affine.

What we write carries no patient text: a fresh header whose ``descrip``, ``aux_file``,
``db_name`` and ``intent_name`` are blank. Both the sform and the qform hold the original
affine (so nibabel, SimpleITK/ITK and FSL agree on it). Writes are atomic: a temporary file in
the destination folder, then ``os.replace``, so readers never see half a file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

from medseglens_core.errors import InvalidInput
from medseglens_core.io.case import Geometry

__all__ = ["write_label_map", "write_volume"]

_TEXT_FIELDS = ("descrip", "aux_file", "db_name", "intent_name")
_XFORM_SCANNER = 1


def write_label_map(label_ras: np.ndarray, geometry: Geometry, path: Path | str) -> None:
    """Write a label map (X, Y, Z) in RAS on the case grid to ``path`` on the original grid.

    Args:
        label_ras: integer (or integral float) labels in 0..255, shape ``geometry.shape``.
        geometry: the case's geometry (from its loader).
        path: destination ending in ``.nii.gz`` (compressed) or ``.nii``.

    The file holds uint8 voxels in the input file's voxel order, with the input's affine.

    Raises:
        GeometryMismatch: the array is not on the case grid.
        InvalidInput: values are not integers in 0..255, or the suffix is not .nii/.nii.gz.
    """
    arr = np.asarray(label_ras)
    if arr.ndim != 3:
        raise InvalidInput(f"A label map must be 3-D (X, Y, Z); got shape {arr.shape}.")
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    if arr.dtype.kind not in "iuf":
        raise InvalidInput(f"A label map must hold integers; got dtype {arr.dtype}.")
    if arr.size and (
        arr.min() < 0 or arr.max() > 255 or (arr.dtype.kind == "f" and np.any(arr != np.round(arr)))
    ):
        raise InvalidInput("A label map must hold integers in 0..255; round or remap it first.")
    _write(geometry.to_original(arr).astype(np.uint8), geometry, path)


def write_volume(arr_ras: np.ndarray, geometry: Geometry, path: Path | str) -> None:
    """Write a float map (X, Y, Z) or (X, Y, Z, C) in RAS to ``path`` on the original grid, float32.

    For latent maps, probabilities, intensities. Trailing channels stay on the 4th axis.

    Raises:
        GeometryMismatch: the first three axes are not on the case grid.
        InvalidInput: more than 4 axes, or the suffix is not .nii/.nii.gz.
    """
    arr = np.asarray(arr_ras)
    if arr.ndim not in (3, 4):
        raise InvalidInput(f"A volume must be (X, Y, Z) or (X, Y, Z, C); got shape {arr.shape}.")
    _write(geometry.to_original(arr).astype(np.float32), geometry, path)


def _write(arr: np.ndarray, geometry: Geometry, path: Path | str) -> None:
    path = Path(path)
    name = path.name.lower()
    if not (name.endswith(".nii.gz") or name.endswith(".nii")):
        raise InvalidInput(f"Output '{path.name}' must end in .nii.gz or .nii.")
    img = nib.Nifti1Image(arr, geometry.original_affine)
    hdr = img.header
    img.set_sform(geometry.original_affine, code=_XFORM_SCANNER)
    img.set_qform(geometry.original_affine, code=_XFORM_SCANNER)
    hdr.set_xyzt_units(xyz="mm")
    for field in _TEXT_FIELDS:
        hdr[field] = b""
    if arr.dtype == np.uint8:
        hdr.set_slope_inter(1.0, 0.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if name.endswith(".nii.gz") else ".nii"
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        nib.save(img, tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
