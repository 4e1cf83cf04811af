"""The in-memory case: four co-registered MRI modalities, an optional label map, and its geometry.

Arrays in memory are in RAS+ canonical voxel order (first axis runs towards the subject's Right,
second Anterior, third Superior) and indexed ``[x, y, z]``; axial slices are ``[:, :, z]``.
:class:`Geometry` records how the arrays were reoriented from the file's own voxel order, so
that :meth:`Geometry.to_original` restores the file's grid exactly (a pure axis permutation and
flip; no resampling).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import nibabel as nib
import numpy as np

from medseglens_core.io.errors import GeometryMismatch, UnsupportedNifti

__all__ = ["MODALITIES", "Case", "Geometry", "IOLimits"]

#: Channel order of ``Case.image`` everywhere in the project: T1 native, T1 contrast-enhanced,
#: T2-weighted, T2-FLAIR (BraTS 2023 file suffixes).
MODALITIES: tuple[str, str, str, str] = ("t1n", "t1c", "t2w", "t2f")

_RAS_ORNT = nib.orientations.axcodes2ornt(("R", "A", "S"))


@dataclass(frozen=True)
class IOLimits:
    """Ceilings applied before anything large is allocated.

    Attributes:
        max_voxels: most voxels one 3-D volume may hold (default 300**3 = 27 M, above the
            BraTS 240x240x155 grid). A 4-D file may hold this many per modality.
        max_file_bytes: most bytes one file may occupy on disk or in an upload (default
            512 MiB), checked before the file is read.
        affine_tolerance: largest absolute difference allowed between the affines of the
            modalities (and label map) of one case, element-wise over the 3x4 upper part (mm
            for the translation column, mm per voxel for the rest). Default 1e-3.
    """

    max_voxels: int = 300 * 300 * 300
    max_file_bytes: int = 512 * 2**20
    affine_tolerance: float = 1e-3


def _frozen(a: Any, dtype: type = np.float64) -> np.ndarray:
    out = np.array(a, dtype=dtype, copy=True)
    out.setflags(write=False)
    return out


@dataclass(frozen=True, eq=False)
class Geometry:
    """Everything needed to go from the in-memory RAS arrays back to the input file's grid.

    Attributes:
        original_affine: (4, 4) voxel-to-world (RAS+ mm) affine of the input file.
        original_shape: (I, J, K) spatial shape of the input file, in its own voxel order.
        affine: (4, 4) affine of the in-memory RAS canonical arrays.
        shape: (X, Y, Z) spatial shape of the in-memory arrays.
        spacing: voxel size in mm along X, Y, Z (RAS axis order).
        ornt: (3, 2) nibabel orientation (``io_orientation(original_affine)``): for each input
            axis, the RAS axis it becomes and whether it is flipped. Derived from
            ``original_affine`` when not given.

    Build one with :meth:`from_affine`; every loader does.
    """

    original_affine: np.ndarray
    original_shape: tuple[int, int, int]
    affine: np.ndarray
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    ornt: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        object.__setattr__(self, "original_affine", _frozen(self.original_affine))
        object.__setattr__(self, "affine", _frozen(self.affine))
        object.__setattr__(self, "original_shape", tuple(int(s) for s in self.original_shape))
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        ornt = self.ornt if self.ornt is not None else _orientation(self.original_affine)
        object.__setattr__(self, "ornt", _frozen(ornt))

    @classmethod
    def from_affine(cls, original_affine: np.ndarray, original_shape: tuple[int, ...]) -> Geometry:
        """Geometry of a file with ``original_affine`` and spatial shape ``original_shape``.

        Raises:
            UnsupportedNifti: the affine is not finite or its 3x3 part is singular.
        """
        original_affine = np.asarray(original_affine, dtype=np.float64)
        shape = tuple(int(s) for s in original_shape[:3])
        ornt = _orientation(original_affine)
        affine = original_affine @ nib.orientations.inv_ornt_aff(ornt, shape)
        ras_shape = tuple(shape[int(i)] for i in np.argsort(ornt[:, 0]))
        spacing = tuple(float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
        return cls(original_affine, shape, affine, ras_shape, spacing, ornt)  # type: ignore[arg-type]

    def to_ras(self, arr: np.ndarray) -> np.ndarray:
        """Reorient ``arr`` (I, J, K[, ...]) from the file's voxel order to RAS (X, Y, Z[, ...]).

        Returns a copy in ``arr``'s memory order (NIfTI data are Fortran-ordered; copying
        across orders is ~5x slower); trailing axes (channels) are kept as they are.
        """
        _check_shape(arr, self.original_shape, "the original grid")
        return np.array(nib.orientations.apply_orientation(arr, self.ornt), order="K")

    def to_original(self, arr_ras: np.ndarray) -> np.ndarray:
        """Reorient ``arr_ras`` (X, Y, Z[, ...]) from RAS back to the file's voxel order.

        The inverse of :meth:`to_ras`: ``to_original(to_ras(a))`` equals ``a`` element for
        element. Trailing axes are kept. Returns a copy in ``arr_ras``'s memory order.

        Raises:
            GeometryMismatch: the first three axes of ``arr_ras`` are not ``self.shape``.
        """
        _check_shape(arr_ras, self.shape, "the case grid")
        back = nib.orientations.ornt_transform(_RAS_ORNT, self.ornt)
        return np.array(nib.orientations.apply_orientation(arr_ras, back), order="K")


def _orientation(affine: np.ndarray) -> np.ndarray:
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise UnsupportedNifti("The image affine is not a finite 4x4 matrix; fix the header's sform/qform.")
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise UnsupportedNifti(
            "The image affine is singular (a zero voxel size or collapsed axes); fix the header's sform/qform."
        )
    return nib.orientations.io_orientation(affine)


def _check_shape(arr: np.ndarray, expected: tuple[int, ...], what: str) -> None:
    if arr.ndim < 3 or tuple(arr.shape[:3]) != tuple(expected):
        raise GeometryMismatch(
            f"Array of shape {tuple(arr.shape)} is not on {what} {tuple(expected)}; "
            "pass an array whose first three axes match it."
        )


@dataclass
class Case:
    """One multi-modal MRI case in memory.

    Attributes:
        case_id: identifier (the BraTS file prefix, the 4-D file stem, or the caller's id).
        image: (4, X, Y, Z) float32, RAS canonical, channels in :data:`MODALITIES` order,
            intensities as stored in the files (after NIfTI scaling; no normalisation).
            Memory layout: each channel is Fortran-ordered (x fastest), as in NIfTI files, so
            an axial slice ``image[c, :, :, z]`` is one contiguous block and loading avoids a
            slow transposing copy. Call ``np.ascontiguousarray`` where C order is required.
        label: (X, Y, Z) uint8 RAS label map with values in {0, 1, 2, 3} (BraTS 2023:
            NCR, SNFH, ET), or None when the case has no segmentation.
        geometry: how to go back to the input grid (see :class:`Geometry`).
        cohort: optional cohort name (``adult``, ``pediatric``, ``ssa``, ``healthy``, ...).
        provenance: where the case came from: ``format`` (``brats2023``, ``brats2021``,
            ``nifti4d``, ``files``), the file basenames per modality, the original axis codes
            and data types. Never full paths, never header text fields.
    """

    case_id: str
    image: np.ndarray
    label: np.ndarray | None
    geometry: Geometry
    cohort: str | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along X, Y, Z (RAS order)."""
        return self.geometry.spacing

    @property
    def affine(self) -> np.ndarray:
        """(4, 4) affine of the in-memory RAS arrays."""
        return self.geometry.affine
