"""Loading stored volumes back into core ``Case`` objects (for previews, segmentation, interventions)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseglens_core.errors import InvalidInput
from service.models_db import Volume
from service.storage import Storage

_NO_LIMIT = 2**62


def load_case(
    files: dict[str, Path],
    order: tuple[str, ...] | None,
    case_id: str,
    *,
    max_voxels: int = _NO_LIMIT,
    max_bytes: int = _NO_LIMIT,
):
    """Load and validate a case with the core loader (blocking; run it through ``ModelPool.run``).

    ``files`` maps roles (``t1n``..``t2f`` or ``image``, optional ``label``) to paths; ``order`` is the
    4th-axis order of ``image``. Returns ``medseglens_core.io.Case`` with ``image`` ``(4, X, Y, Z)`` RAS.
    Raises the core's typed errors, plus ``InvalidInput`` for non-finite voxels.
    """
    from medseglens_core.io import IOLimits, load_case_from_files

    label = files.get("label")
    images = {role: path for role, path in files.items() if role != "label"}
    case = load_case_from_files(
        images,
        label=label,
        modality_order=list(order) if order else None,
        case_id=case_id,
        limits=IOLimits(max_voxels=max_voxels, max_file_bytes=max_bytes),
    )
    if not np.isfinite(case.image).all():
        raise InvalidInput("The image holds NaN or infinite voxels; export finite intensities.")
    return case


def stored_paths(storage: Storage, volume: Volume) -> dict[str, Path]:
    """Role -> absolute path of each stored file of ``volume``."""
    return {f["role"]: storage.resolve(f["path"]) for f in volume.files}


def load_volume_case(storage: Storage, volume: Volume):
    """The stored volume as a core ``Case`` (``case_id`` = volume id, ``cohort`` = its tag)."""
    order = tuple(volume.modality_order) if volume.modality_order else None
    case = load_case(stored_paths(storage, volume), order, volume.id)
    case.cohort = volume.cohort
    return case
