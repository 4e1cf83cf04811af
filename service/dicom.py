"""DICOM plumbing of the service: receive a multipart of .dcm files or a zip, turn a study into a stored
volume (the same NIfTI files and ``Volume`` row as a NIfTI upload, plus ``dicom/``), build SEGs, and talk
DICOMweb (dicomweb-client) to ``MEDSEGLENS_DICOMWEB_URL``.

A DICOM-sourced volume's directory holds, next to ``t1n.nii.gz`` .. ``t2f.nii.gz`` (on t1c's grid, in
the series' own ``[column, row, slice]`` voxel order):

- ``dicom/source.json``: study/series/instance UIDs, frame of reference, modality mapping;
- ``dicom/ref/NNNN.dcm``: the t1c slices' headers (no pixel data), sorted by position, that SEGs
  reference.

Environment: ``MEDSEGLENS_DICOMWEB_URL`` (e.g. ``http://127.0.0.1:8042/dicom-web``),
``MEDSEGLENS_DICOMWEB_USERNAME`` + ``MEDSEGLENS_DICOMWEB_PASSWORD`` (basic auth) or
``MEDSEGLENS_DICOMWEB_TOKEN`` (bearer), ``MEDSEGLENS_DICOMWEB_TIMEOUT_S`` (default 60).
No patient attribute is logged or returned.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from starlette.requests import Request

from medseglens_core.io.dicom import (
    DicomError,
    DicomStudy,
    NotDicom,
    UnsupportedTransferSyntax,
    datasets_from_bytes,
    read_study,
    read_zip,
)
from service.errors import (
    Conflict,
    InvalidUpload,
    PayloadTooLarge,
    ServiceError,
    UnsupportedMediaType,
)
from service.jsonlimits import loads_bounded
from service.uploads import MultipartReceiver, multipart_boundary, stream_multipart

SOURCE_FILE = "source.json"
FILE_FIELDS = frozenset({"file", "files"})
TEXT_FIELDS = frozenset({"series_map", "cohort", "metadata"})
ZIP_MAGIC = b"PK\x03\x04"


class BadGateway(ServiceError):
    status, slug, title = 502, "dicomweb-unreachable", "DICOMweb server unreachable"


class DicomwebNotConfigured(ServiceError):
    status, slug, title = 503, "dicomweb-not-configured", "No DICOMweb server configured"


class StudyNotFound(ServiceError):
    status, slug, title = 404, "study-not-found", "Study not found"


class NoDicomSource(Conflict):
    slug = "no-dicom-source"
    title = "Volume has no DICOM source"


# ---------------------------------------------------------------------------------- multipart


@dataclass
class DicomUpload:
    parts: list[Path]
    fields: dict[str, str]
    size: int


async def receive_dicom_multipart(request: Request, dest: Path, *, max_bytes: int) -> DicomUpload:
    """Stream a multipart body of ``file`` parts (.dcm files or one zip) into ``dest``; byte-limited."""
    boundary = multipart_boundary(
        request, max_bytes, "Send the DICOM files (or one zip) as multipart/form-data 'file' parts."
    )
    rx = MultipartReceiver(
        dest,
        file_fields=FILE_FIELDS,
        text_fields=TEXT_FIELDS,
        hint="send the DICOM files (or one zip) as 'file' parts",
        repeat_files=True,
    )
    received = await stream_multipart(request, boundary, rx, max_bytes)
    if not rx.files:
        raise InvalidUpload("No 'file' part: send the study's .dcm files or one zip as 'file' parts.")
    return DicomUpload([f.path for f in rx.files], rx.fields, received)


def parse_series_map(raw: Any) -> dict[str, str] | None:
    """``series_map``: a JSON object (or dict) of SeriesInstanceUID/SeriesDescription -> modality."""
    if raw in (None, "", {}):
        return None
    if isinstance(raw, str):
        try:
            raw = loads_bounded(raw, "'series_map'")
        except json.JSONDecodeError as exc:
            raise InvalidUpload(
                "'series_map' is not JSON; send an object {uid or description: modality}."
            ) from exc
    if not isinstance(raw, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in raw.items()
    ):
        raise InvalidUpload("'series_map' must be a JSON object of strings {uid or description: modality}.")
    return raw


# ---------------------------------------------------------------------------------- study -> volume


def _translate(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Run core DICOM code, turning its errors into service problems (415 / 422 with series)."""
    try:
        return fn(*args, **kwargs)
    except UnsupportedTransferSyntax as exc:
        raise UnsupportedMediaType(str(exc)) from exc
    except DicomError as exc:
        series = getattr(exc, "series", None)
        raise InvalidUpload(str(exc), **({"series": series} if series else {})) from exc
    except NotDicom as exc:
        raise InvalidUpload(str(exc)) from exc


def load_upload_datasets(parts: list[Path], max_bytes: int) -> list[Any]:
    blobs: list[tuple[str, bytes]] = []
    for n, part in enumerate(parts):
        with open(part, "rb") as fh:
            head = fh.read(4)
        if head == ZIP_MAGIC:
            blobs.extend(_translate(read_zip, part, max_bytes))
        else:
            blobs.append((f"#{n + 1}", part.read_bytes()))
        part.unlink()
    return _translate(datasets_from_bytes, blobs)


def study_to_stage(
    datasets: list[Any], series_map: dict[str, str] | None, stage: Path, *, max_voxels: int
) -> tuple[DicomStudy, dict[str, Path]]:
    """Read the study, write ``<modality>.nii.gz`` + ``dicom/`` into ``stage``; returns the paths."""
    import nibabel as nib

    study = _translate(read_study, datasets, series_map, max_voxels=max_voxels)

    def write(modality: str) -> Path:
        series = study.series[modality]
        img = nib.Nifti1Image(np.asarray(series.data, dtype=np.float32), series.affine)
        img.header.set_xyzt_units("mm")
        img.set_sform(series.affine, code=1)
        img.set_qform(series.affine, code=1)
        path = stage / f"{modality}.nii.gz"
        img.to_filename(path)
        series.data = None
        return path

    # gzip (zlib) releases the GIL: the four files compress in parallel
    with ThreadPoolExecutor(max_workers=len(study.series)) as ex:
        paths = dict(zip(study.series, ex.map(write, study.series), strict=True))
    ref_dir = stage / "dicom" / "ref"
    ref_dir.mkdir(parents=True)
    for k, ds in enumerate(study.series["t1c"].datasets):
        ds.save_as(ref_dir / f"{k:05d}.dcm", enforce_file_format=True)
    (stage / "dicom" / SOURCE_FILE).write_text(json.dumps(study.source(), indent=1))
    return study, paths


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(2**20), b""):
            h.update(chunk)
    return h.hexdigest()


def dicom_source(volume_dir: Path) -> dict[str, Any] | None:
    path = volume_dir / "dicom" / SOURCE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def reference_datasets(volume_dir: Path) -> list[Any]:
    import pydicom

    return [pydicom.dcmread(p) for p in sorted((volume_dir / "dicom" / "ref").glob("*.dcm"))]


# ---------------------------------------------------------------------------------- DICOMweb


def dicomweb_client(url: str | None = None) -> Any:
    """A ``DICOMwebClient`` for ``MEDSEGLENS_DICOMWEB_URL`` (basic auth or bearer from the env)."""
    import requests
    from dicomweb_client.api import DICOMwebClient

    url = url or os.environ.get("MEDSEGLENS_DICOMWEB_URL", "")
    if not url:
        raise DicomwebNotConfigured(
            "Set MEDSEGLENS_DICOMWEB_URL to the DICOMweb root, e.g. http://pacs/dicom-web."
        )
    session = requests.Session()
    user, password = (
        os.environ.get("MEDSEGLENS_DICOMWEB_USERNAME"),
        os.environ.get("MEDSEGLENS_DICOMWEB_PASSWORD"),
    )
    token = os.environ.get("MEDSEGLENS_DICOMWEB_TOKEN")
    if user:
        session.auth = (user, password or "")
    elif token:
        session.headers["Authorization"] = f"Bearer {token}"
    timeout = float(os.environ.get("MEDSEGLENS_DICOMWEB_TIMEOUT_S", "60"))
    _orig = session.request
    session.request = lambda *a, **k: _orig(*a, **{"timeout": timeout, **k})  # type: ignore[method-assign]
    return DICOMwebClient(url=url, session=session)


def _pacs_errors(what: str):
    import contextlib

    import requests

    @contextlib.contextmanager
    def guard():
        try:
            yield
        except requests.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else "?"
            if code == 404:
                raise StudyNotFound(f"The DICOMweb server has no such study ({what}: HTTP 404).") from exc
            raise BadGateway(f"The DICOMweb server answered {what} with HTTP {code}.") from exc
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise BadGateway(f"The DICOMweb server did not answer {what} ({type(exc).__name__}).") from exc
        except requests.RequestException as exc:
            raise BadGateway(f"{what} failed ({type(exc).__name__}).") from exc

    return guard()


def pull_study(study_uid: str, max_bytes: int) -> list[Any]:
    """QIDO-RS the study's series, WADO-RS each MR series' instances (byte-limited)."""
    client = dicomweb_client()
    with _pacs_errors("QIDO-RS"):
        found = client.search_for_series(study_instance_uid=study_uid)
    series_uids = []
    for item in found or []:
        modality = (item.get("00080060", {}).get("Value") or [""])[0]
        uid = (item.get("0020000E", {}).get("Value") or [""])[0]
        if uid and modality in ("MR", ""):
            series_uids.append(uid)
    if not series_uids:
        raise StudyNotFound("The DICOMweb server lists no MR series for that StudyInstanceUID.")
    datasets: list[Any] = []
    total = 0
    with _pacs_errors("WADO-RS"):
        for uid in series_uids:
            for ds in client.iter_series(study_instance_uid=study_uid, series_instance_uid=uid):
                total += len(ds.get("PixelData", b"") or b"")
                if total > max_bytes:
                    raise PayloadTooLarge(f"The study is over the limit of {max_bytes} bytes.")
                datasets.append(ds)
    return datasets


def stow(ds: Any) -> None:
    client = dicomweb_client()
    with _pacs_errors("STOW-RS"):
        client.store_instances(datasets=[ds])
