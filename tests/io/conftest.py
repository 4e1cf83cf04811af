"""Fixtures for I/O tests (builders live in tests/io/builders.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medseglens_core.io import MODALITIES
from tests.io.builders import SUFFIX_2021, SUFFIX_2023, make_arrays, oblique_lps_affine, save


@pytest.fixture
def write_case():
    """``write_case(folder, layout="brats2023", case_id=..., **overrides)`` -> folder.

    Overrides: ``images`` / ``label`` arrays (``label=None`` for no seg), ``affine``, and
    ``affines`` / ``arrays`` dicts to replace single modalities.
    """

    def _write(
        folder: Path,
        layout: str = "brats2023",
        case_id: str = "BraTS-GLI-00001-000",
        *,
        images: dict[str, np.ndarray] | None = None,
        label: np.ndarray | None | str = "default",
        affine: np.ndarray | None = None,
        affines: dict[str, np.ndarray] | None = None,
    ) -> Path:
        default_images, default_label = make_arrays()
        images = {**default_images, **(images or {})}
        label = default_label if isinstance(label, str) else label
        affine = oblique_lps_affine() if affine is None else affine
        suffix = SUFFIX_2023 if layout == "brats2023" else SUFFIX_2021
        folder.mkdir(parents=True, exist_ok=True)
        for m in MODALITIES:
            aff = (affines or {}).get(m, affine)
            save(images[m], aff, folder / f"{case_id}{suffix[m]}.nii.gz")
        if label is not None:
            save(label, (affines or {}).get("seg", affine), folder / f"{case_id}{suffix['seg']}.nii.gz")
        return folder

    return _write
