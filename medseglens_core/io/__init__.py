"""NIfTI/BraTS case I/O: safe reading, validation, RAS canonical cases, writing on the input grid.

Public API (see docs/ARCHITECTURE.md): :data:`MODALITIES`, :class:`IOLimits`, :class:`Geometry`,
:class:`Case`, :func:`load_case`, :func:`load_case_4d`, :func:`load_case_from_files`,
:func:`find_cases`, :func:`write_label_map`, :func:`write_volume`; typed errors in
:mod:`medseglens_core.io.errors`.
"""

from medseglens_core.io.case import MODALITIES, Case, Geometry, IOLimits
from medseglens_core.io.loaders import (
    LAYOUTS,
    find_cases,
    load_case,
    load_case_4d,
    load_case_from_files,
    normalise_modality_order,
)
from medseglens_core.io.nifti import NiftiVolume, read_nifti
from medseglens_core.io.writers import write_label_map, write_volume

__all__ = [
    "LAYOUTS",
    "MODALITIES",
    "Case",
    "Geometry",
    "IOLimits",
    "NiftiVolume",
    "find_cases",
    "load_case",
    "load_case_4d",
    "load_case_from_files",
    "normalise_modality_order",
    "read_nifti",
    "write_label_map",
    "write_volume",
]
