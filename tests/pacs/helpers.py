"""DICOM studies for the PACS tests, written with the service's own maker from the builders' case."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from medseglens_core.io.dicom import write_study
from tests.service.builders import AFFINE, arrays


def write_case_study(
    out: Path, *, affine: np.ndarray = AFFINE, case_id: str = "PACS-TEST", reverse: bool = False
):
    """The builders' planted case as one DICOM study; returns (info, images, label)."""
    images, label = arrays()
    info = write_study(
        {m: (a, affine) for m, a in images.items()}, out, case_id=case_id, reverse_files=reverse
    )
    return info, images, label


def zip_dir(folder: Path, extra: dict[str, bytes] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in sorted(folder.rglob("*.dcm")):
            zf.write(p, p.relative_to(folder).as_posix())
        for name, blob in (extra or {}).items():
            zf.writestr(name, blob)
    return buf.getvalue()


def dcm_parts(folder: Path) -> list[tuple[str, tuple[str, bytes, str]]]:
    """httpx ``files=`` list: every .dcm of ``folder`` as a repeated ``file`` part."""
    return [("file", (p.name, p.read_bytes(), "application/dicom")) for p in sorted(folder.rglob("*.dcm"))]
