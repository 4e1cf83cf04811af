"""Typed errors of NIfTI/BraTS case I/O.

Each class names one condition and its message says what to do about it. Messages name only
what the caller gave us (a modality name such as ``t1n`` and, for files, the file's basename):
never a directory path and never a NIfTI header text field (``descrip``, ``aux_file``,
``db_name``, ``intent_name``), since those may identify a patient.

The service maps :class:`~medseglens_core.errors.InvalidInput` to 422,
:class:`~medseglens_core.errors.TooLarge` to 413 and
:class:`~medseglens_core.errors.NotFound` to 404.
"""

from __future__ import annotations

from medseglens_core.errors import InvalidInput, NotFound, TooLarge

__all__ = [
    "AffineMismatch",
    "CaseNotFound",
    "CorruptGzip",
    "FileTooLarge",
    "GeometryMismatch",
    "IncompleteCase",
    "InvalidLabelValues",
    "InvalidModalityOrder",
    "NonFiniteVoxels",
    "NotNifti",
    "TooManyVoxels",
    "TruncatedGzip",
    "TruncatedNifti",
    "UnsupportedNifti",
    "WrongDimensionality",
    "ModalityShapeMismatch",
]


class FileTooLarge(TooLarge):
    """A file (on disk or uploaded) is larger than ``IOLimits.max_file_bytes``."""


class TooManyVoxels(TooLarge):
    """A header declares more voxels per volume than ``IOLimits.max_voxels``."""


class CorruptGzip(InvalidInput):
    """The gzip stream is damaged (bad header, bad deflate data, CRC mismatch)."""


class TruncatedGzip(InvalidInput):
    """The gzip stream ends before its end-of-stream marker (an interrupted copy or upload)."""


class NotNifti(InvalidInput):
    """The bytes are not a single-file NIfTI-1 or NIfTI-2 image."""


class TruncatedNifti(InvalidInput):
    """The header declares more voxel data than the (decompressed) file holds."""


class UnsupportedNifti(InvalidInput):
    """A NIfTI file we cannot use: unsupported data type, invalid dimensions, singular affine."""


class WrongDimensionality(InvalidInput):
    """An image is not 3-D (or, for the 4-D loader, not 4-D with one volume per modality)."""


class NonFiniteVoxels(InvalidInput):
    """An image holds NaN or infinite voxels."""


class ModalityShapeMismatch(InvalidInput):
    """The modalities (or the label map) of one case have different grid shapes."""


class AffineMismatch(InvalidInput):
    """The modalities (or the label map) of one case disagree on the voxel-to-world affine."""


class InvalidLabelValues(InvalidInput):
    """A label map holds values outside the BraTS convention {0, 1, 2, 3} (2021: also 4)."""


class IncompleteCase(InvalidInput):
    """A case folder lacks modalities, mixes naming schemes, or holds several cases."""


class InvalidModalityOrder(InvalidInput):
    """A declared modality order (or a set of upload keys) does not name the four modalities."""


class GeometryMismatch(InvalidInput):
    """An array handed to a writer or to ``Geometry.to_original`` is not on the case grid."""


class CaseNotFound(NotFound):
    """A case folder or image file does not exist."""
