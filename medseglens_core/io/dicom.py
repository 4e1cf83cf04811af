"""DICOM MR series in (four series -> one BraTS case) and out (a NIfTI case -> one DICOM study).

Geometry follows the nibabel / dcm2niix convention, so a series and its dcm2niix NIfTI agree:

- voxel index ``[i, j, k]``: ``i`` the pixel column, ``j`` the pixel row, ``k`` the slice, slices
  sorted by their ``ImagePositionPatient`` projected on the slice normal
  (``cross(row_cosine, column_cosine)``), never by file order or ``InstanceNumber``;
- the LPS affine has columns ``row_cosine * column_spacing``, ``column_cosine * row_spacing``, the
  step between consecutive slice positions, and the first slice's position; the RAS affine is
  ``diag(-1, -1, 1, 1) @ LPS``;
- stored pixels are mapped with ``RescaleSlope`` / ``RescaleIntercept``.

:func:`write_study` inverts this exactly for affines with a positive determinant (BraTS and the
synthetic cases), so ``read_study(write_study(case))`` gives the case's affine and, up to the
16-bit quantisation of the intensities, its voxels. For a negative determinant the slice axis comes
back reversed (the same world mapping on a different voxel order), as it would from dcm2niix.

Errors name series by number and description, never by a patient attribute.
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medseglens_core.errors import InvalidInput, MedSegLensError, TooLarge
from medseglens_core.io.case import MODALITIES

__all__ = [
    "DicomError",
    "DicomSeries",
    "DicomStudy",
    "UnsupportedTransferSyntax",
    "assign_modalities",
    "datasets_from_bytes",
    "read_series",
    "read_study",
    "series_affine",
    "write_study",
]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
#: Geometry tolerances: direction cosines (unitless) and positions/spacings (mm).
COSINE_TOL = 1e-4
POSITION_TOL = 1e-3
_UNCOMPRESSED = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99"}


class DicomError(InvalidInput):
    """A DICOM upload that cannot be read as one four-series MR study (422)."""


class NotDicom(MedSegLensError):
    """A file of the upload is not DICOM (400)."""


class UnsupportedTransferSyntax(MedSegLensError):
    """Pixel data in a transfer syntax no installed pydicom handler decodes (415)."""


class DicomTooLarge(TooLarge):
    """A zip or series larger than the byte/voxel limits (413)."""


@dataclass
class DicomSeries:
    """One MR series: its sorted slice headers (no pixel data kept) and the volume."""

    series_uid: str
    number: int | None
    description: str
    datasets: list[Any]  # pydicom Datasets sorted by position along the normal
    data: np.ndarray | None = None  # float32 (I=columns, J=rows, K=slices), rescale applied
    affine: np.ndarray | None = None  # RAS (4, 4)

    @property
    def name(self) -> str:
        """How errors and responses call the series (number + description, no patient data)."""
        num = "?" if self.number is None else str(self.number)
        return f"series {num} {self.description!r} ({self.series_uid})"

    def summary(self) -> dict[str, Any]:
        return {
            "series_instance_uid": self.series_uid,
            "series_number": self.number,
            "series_description": self.description,
            "slices": len(self.datasets),
        }


@dataclass
class DicomStudy:
    """Four series mapped to modalities, on one grid."""

    study_uid: str
    frame_of_reference_uid: str
    series: dict[str, DicomSeries]  # modality -> series
    resampled: list[str] = field(default_factory=list)

    @property
    def affine(self) -> np.ndarray:
        return self.series["t1c"].affine  # type: ignore[return-value]

    def source(self) -> dict[str, Any]:
        """What SEG export needs to reference the source (UIDs only)."""
        return {
            "study_instance_uid": self.study_uid,
            "frame_of_reference_uid": self.frame_of_reference_uid,
            "resampled_onto_t1c": list(self.resampled),
            "series": {
                m: {
                    **s.summary(),
                    "sop_instance_uids": [str(d.SOPInstanceUID) for d in s.datasets],
                    "sop_class_uid": str(s.datasets[0].SOPClassUID),
                }
                for m, s in self.series.items()
            },
        }


# ---------------------------------------------------------------------------------------- reading


def datasets_from_bytes(blobs: Iterable[tuple[str, bytes]]) -> list[Any]:
    """Parse DICOM files (``(label, bytes)`` pairs); a non-DICOM file is :class:`NotDicom`."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    out = []
    for label, blob in blobs:
        try:
            ds = pydicom.dcmread(io.BytesIO(blob))
        except (InvalidDicomError, EOFError, ValueError, TypeError, OSError) as exc:
            raise NotDicom(f"File {label} is not a DICOM Part 10 file; send only .dcm files.") from exc
        if "SeriesInstanceUID" not in ds or "PixelData" not in ds:
            raise NotDicom(f"File {label} is DICOM but not an image (no series UID or pixel data).")
        out.append(ds)
    if not out:
        raise DicomError("The upload holds no DICOM files.")
    return out


def read_zip(blob_or_path: bytes | Path, max_bytes: int) -> list[tuple[str, bytes]]:
    """The files of a zip (directories skipped), refusing more than ``max_bytes`` uncompressed."""
    src = io.BytesIO(blob_or_path) if isinstance(blob_or_path, bytes) else blob_or_path
    try:
        zf = zipfile.ZipFile(src)
    except zipfile.BadZipFile as exc:
        raise NotDicom("The 'file' part is neither a zip archive nor a DICOM file.") from exc
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        total = sum(i.file_size for i in infos)
        if total > max_bytes:
            raise DicomTooLarge(f"The zip inflates to {total} bytes, over the limit of {max_bytes} bytes.")
        files = []
        for n, info in enumerate(infos):
            base = info.filename.rsplit("/", 1)[-1]
            if base.startswith(".") or base.upper() == "DICOMDIR":
                continue
            try:
                files.append((f"#{n + 1} in the zip", zf.read(info)))
            except (zipfile.BadZipFile, RuntimeError, NotImplementedError, OSError) as exc:
                raise NotDicom(
                    f"File #{n + 1} in the zip cannot be extracted ({type(exc).__name__})."
                ) from exc
    return files


def _floats(ds: Any, keyword: str, n: int, series: str) -> np.ndarray:
    value = ds.get(keyword)
    try:
        arr = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DicomError(f"{series}: {keyword} is missing or not numeric.") from exc
    if arr.shape != (n,) or not np.isfinite(arr).all():
        raise DicomError(f"{series}: {keyword} must hold {n} finite numbers.")
    return arr


def group_series(datasets: list[Any]) -> list[DicomSeries]:
    """Group by SeriesInstanceUID; one study, MR only."""
    studies = {str(ds.get("StudyInstanceUID", "")) for ds in datasets}
    if len(studies) != 1:
        raise DicomError(f"The upload mixes {len(studies)} studies; send one study's series at a time.")
    groups: dict[str, list[Any]] = {}
    for ds in datasets:
        groups.setdefault(str(ds.SeriesInstanceUID), []).append(ds)
    out = []
    for uid, items in groups.items():
        first = items[0]
        number = first.get("SeriesNumber")
        s = DicomSeries(
            uid,
            int(number) if number not in (None, "") else None,
            str(first.get("SeriesDescription", "")),
            items,
        )
        modality = str(first.get("Modality", ""))
        if modality != "MR":
            raise DicomError(f"{s.name} has modality {modality or 'none'!r}; only MR series are segmented.")
        out.append(s)
    return sorted(out, key=lambda s: (s.number if s.number is not None else 1 << 30, s.series_uid))


def series_affine(datasets: list[Any], name: str = "series") -> tuple[list[Any], np.ndarray]:
    """Sort slices by position along the normal, check the stack, return (sorted, RAS affine)."""
    first = datasets[0]
    iop = _floats(first, "ImageOrientationPatient", 6, name)
    row_cos, col_cos = iop[:3], iop[3:]
    if (
        abs(np.linalg.norm(row_cos) - 1) > 1e-3
        or abs(np.linalg.norm(col_cos) - 1) > 1e-3
        or abs(row_cos @ col_cos) > 1e-3
    ):
        raise DicomError(f"{name}: ImageOrientationPatient is not two orthonormal directions.")
    spacing = _floats(first, "PixelSpacing", 2, name)
    if (spacing <= 0).any():
        raise DicomError(f"{name}: PixelSpacing must be positive.")
    rows, cols = int(first.Rows), int(first.Columns)
    normal = np.cross(row_cos, col_cos)
    positions = []
    for ds in datasets:
        if not np.allclose(_floats(ds, "ImageOrientationPatient", 6, name), iop, atol=COSINE_TOL):
            raise DicomError(f"{name}: slices have different ImageOrientationPatient.")
        if not np.allclose(_floats(ds, "PixelSpacing", 2, name), spacing, atol=1e-4):
            raise DicomError(f"{name}: slices have different PixelSpacing.")
        if int(ds.Rows) != rows or int(ds.Columns) != cols:
            raise DicomError(f"{name}: slices have different Rows/Columns.")
        positions.append(_floats(ds, "ImagePositionPatient", 3, name))
    pos = np.asarray(positions)
    along = pos @ normal
    order = np.argsort(along, kind="stable")
    pos, along = pos[order], along[order]
    sorted_ds = [datasets[i] for i in order]
    n = len(sorted_ds)
    if n > 1:
        gaps = np.diff(along)
        if (gaps < POSITION_TOL).any():
            raise DicomError(f"{name}: duplicated slices (two slices at the same position).")
        step_len = float(np.median(gaps))
        if np.abs(gaps - step_len).max() > max(POSITION_TOL, 1e-3 * step_len):
            raise DicomError(
                f"{name}: slice positions are not evenly spaced (missing slices or inconsistent spacing; "
                f"gaps {gaps.min():.4g}..{gaps.max():.4g} mm)."
            )
        step = (pos[-1] - pos[0]) / (n - 1)
        if np.linalg.norm(np.cross(step / np.linalg.norm(step), normal)) > 1e-3:
            raise DicomError(f"{name}: slices are not stacked along their normal (gantry tilt / shear).")
    else:
        thickness = float(first.get("SpacingBetweenSlices") or first.get("SliceThickness") or 1.0)
        step = normal * thickness
    lps = np.eye(4)
    lps[:3, 0] = row_cos * spacing[1]
    lps[:3, 1] = col_cos * spacing[0]
    lps[:3, 2] = step
    lps[:3, 3] = pos[0]
    return sorted_ds, LPS_TO_RAS @ lps


def _pixels(ds: Any, name: str) -> np.ndarray:
    meta = getattr(ds, "file_meta", None)
    tsuid = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
    try:
        arr = ds.pixel_array
    except (NotImplementedError, RuntimeError, ValueError, AttributeError) as exc:
        if tsuid and tsuid not in _UNCOMPRESSED:
            raise UnsupportedTransferSyntax(
                f"{name}: transfer syntax {tsuid} cannot be decoded by the installed pixel handlers; "
                "send uncompressed (Explicit VR Little Endian) or install a decoder (pylibjpeg)."
            ) from exc
        raise DicomError(f"{name}: pixel data cannot be read ({type(exc).__name__}).") from exc
    if arr.ndim != 2:
        raise DicomError(f"{name}: only single-frame grey-scale slices are supported (got {arr.shape}).")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return arr.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def read_series(series: DicomSeries, max_voxels: int | None = None) -> DicomSeries:
    """Sort, check and load one series in place: ``data`` (I, J, K) float32 and RAS ``affine``."""
    first = series.datasets[0]
    n_vox = int(first.Rows) * int(first.Columns) * len(series.datasets)
    if max_voxels is not None and n_vox > max_voxels:
        raise DicomTooLarge(f"{series.name} has {n_vox} voxels, over the limit of {max_voxels}.")
    series.datasets, series.affine = series_affine(series.datasets, series.name)
    data = np.empty((int(first.Columns), int(first.Rows), len(series.datasets)), dtype=np.float32)
    for k, ds in enumerate(series.datasets):
        data[:, :, k] = _pixels(ds, series.name).T
        del ds.PixelData  # headers only from here on (SEG references them)
    if not np.isfinite(data).all():
        raise DicomError(f"{series.name}: non-finite intensities after rescale.")
    series.data = data
    return series


_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("t2f", re.compile(r"flair|t2[ _-]?f\b|\bt2f\b")),
    ("t1c", re.compile(r"\bt1c\b|t1.*(\bpost\b|gd|gad|contrast|\+ ?c\b|\bce\b|\bc\+)|\bmprage.*(gd|post)")),
    ("t2w", re.compile(r"\bt2w\b|\bt2\b|t2[ _-]?(tse|fse|weighted)")),
    ("t1n", re.compile(r"\bt1n\b|\bt1\b|t1[ _-]?(pre|native|se|tse|mprage|weighted)")),
)
DEFAULT_RULES_DOC = (
    "SeriesDescription, case-insensitive, first rule that matches: 'flair'/'t2f' -> t2f; "
    "'t1c' or T1 with post/gd/gad/contrast/+c/ce -> t1c (also any series with ContrastBolusAgent "
    "whose description says T1); 't2w'/'t2' -> t2w; 't1n'/'t1' -> t1n."
)


def _default_modality(s: DicomSeries) -> str | None:
    desc = s.description.lower()
    agent = str(s.datasets[0].get("ContrastBolusAgent", "") or "").strip()
    for modality, pattern in _RULES:
        if pattern.search(desc):
            if modality == "t1n" and agent:
                return "t1c"
            return modality
    return None


def assign_modalities(
    series: list[DicomSeries], series_map: Mapping[str, str] | None = None
) -> dict[str, DicomSeries]:
    """Map series to t1n/t1c/t2w/t2f; by ``series_map`` (UID or description -> modality) else rules.

    Raises :class:`DicomError` listing every series when the mapping is missing, ambiguous or
    incomplete (``series`` in the error's ``extra``).
    """
    listing = [s.summary() for s in series]

    def fail(msg: str) -> DicomError:
        err = DicomError(msg + " Series found: " + "; ".join(s.name for s in series) + ".")
        err.series = listing  # type: ignore[attr-defined]
        return err

    if series_map:
        bad = {v for v in series_map.values() if v not in MODALITIES}
        if bad:
            raise fail(
                f"series_map values must be among {', '.join(MODALITIES)} (got {', '.join(sorted(bad))})."
            )
    found: dict[str, list[DicomSeries]] = {}
    for s in series:
        if series_map:
            modality = series_map.get(s.series_uid) or series_map.get(s.description)
        else:
            modality = _default_modality(s)
        if modality is not None:
            found.setdefault(modality, []).append(s)
    dup = [m for m, items in found.items() if len(items) > 1]
    if dup:
        raise fail(f"Ambiguous: more than one series maps to {', '.join(sorted(dup))}; send a series_map.")
    missing = [m for m in MODALITIES if m not in found]
    if missing:
        how = "series_map" if series_map else "the default rules (" + DEFAULT_RULES_DOC + ")"
        raise fail(f"No series maps to {', '.join(missing)} by {how}; send a series_map.")
    return {m: found[m][0] for m in MODALITIES}


def _resample(
    data: np.ndarray, affine: np.ndarray, target_affine: np.ndarray, shape: tuple[int, ...]
) -> np.ndarray:
    from scipy.ndimage import affine_transform

    vox = np.linalg.inv(affine) @ target_affine
    return affine_transform(
        data, vox[:3, :3], vox[:3, 3], output_shape=shape, order=1, mode="nearest"
    ).astype(np.float32)


def read_study(
    datasets: list[Any],
    series_map: Mapping[str, str] | None = None,
    *,
    max_voxels: int | None = None,
    allow_resample: bool = True,
) -> DicomStudy:
    """Four MR series of one study -> :class:`DicomStudy` on t1c's grid.

    Series whose orientation matches t1c's but whose spacing/extent differ are resampled (linear)
    onto t1c's grid when ``allow_resample``; a different orientation or frame of reference is a
    :class:`DicomError`.
    """
    series = group_series(datasets)
    mapped = assign_modalities(series, series_map)
    for s in mapped.values():
        read_series(s, max_voxels)
    ref = mapped["t1c"]
    fors = {str(s.datasets[0].get("FrameOfReferenceUID", "")) for s in mapped.values()}
    if len(fors) != 1:
        raise DicomError("The four series have different FrameOfReferenceUIDs; register them first.")
    resampled = []
    for m, s in mapped.items():
        if s is ref:
            continue
        assert s.data is not None and s.affine is not None and ref.data is not None and ref.affine is not None
        if s.data.shape == ref.data.shape and np.allclose(s.affine, ref.affine, atol=POSITION_TOL):
            continue
        r1 = s.affine[:3, :3] / np.linalg.norm(s.affine[:3, :3], axis=0)
        r2 = ref.affine[:3, :3] / np.linalg.norm(ref.affine[:3, :3], axis=0)
        if not allow_resample or not np.allclose(r1, r2, atol=1e-3):
            raise DicomError(
                f"{s.name} ({m}) is not on t1c's grid (different orientation); register it first."
            )
        s.data = _resample(s.data, s.affine, ref.affine, ref.data.shape)
        s.affine = ref.affine.copy()
        resampled.append(m)
    return DicomStudy(str(ref.datasets[0].StudyInstanceUID), fors.pop(), mapped, resampled)


# ---------------------------------------------------------------------------------------- writing


def _ds(value: float) -> str:
    from pydicom.valuerep import format_number_as_ds

    return format_number_as_ds(float(value))


def _uid(*parts: str) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=["medseglens", *parts])


def write_study(
    volumes: Mapping[str, tuple[np.ndarray, np.ndarray]],
    out_dir: Path,
    *,
    case_id: str,
    reverse_files: bool = False,
) -> dict[str, Any]:
    """Write one DICOM study, one MR series per modality, from ``{modality: (data, RAS affine)}``.

    UIDs are derived from ``case_id`` (the same case always gives the same UIDs); patient and
    study attributes are synthetic. Intensities are stored as uint16 with a per-series
    RescaleSlope/RescaleIntercept. ``reverse_files`` numbers files and InstanceNumber from the top
    slice down (to test position-based ordering). Returns the study UID and file counts.
    """
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    out_dir.mkdir(parents=True, exist_ok=True)
    study_uid = _uid(case_id, "study")
    for_uid = _uid(case_id, "frame-of-reference")
    written: dict[str, int] = {}
    for n, modality in enumerate(MODALITIES):
        if modality not in volumes:
            continue
        data, affine = volumes[modality]
        data = np.asarray(data, dtype=np.float64)
        lps = LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
        col_spacing = float(np.linalg.norm(lps[:3, 0]))
        row_spacing = float(np.linalg.norm(lps[:3, 1]))
        row_cos, col_cos = lps[:3, 0] / col_spacing, lps[:3, 1] / row_spacing
        step = lps[:3, 2]
        lo, hi = float(data.min()), float(data.max())
        slope = (hi - lo) / 65535.0 if hi > lo else 1.0
        stored = np.clip(np.round((data - lo) / slope), 0, 65535).astype(np.uint16)
        series_uid = _uid(case_id, modality, "series")
        series_dir = out_dir / f"{n + 1:02d}-{modality}"
        series_dir.mkdir(exist_ok=True)
        nz = data.shape[2]
        for k in range(nz):
            inst = (nz - k) if reverse_files else (k + 1)
            sop_uid = _uid(case_id, modality, str(k))
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
            meta.MediaStorageSOPInstanceUID = sop_uid
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = pydicom.Dataset()
            ds.file_meta = meta
            ds.SOPClassUID = MR_IMAGE_STORAGE
            ds.SOPInstanceUID = sop_uid
            ds.PatientName = f"SYNTHETIC^{case_id}"[:64]
            ds.PatientID = case_id[:64]
            ds.PatientBirthDate = ""
            ds.PatientSex = "O"
            ds.StudyInstanceUID = study_uid
            ds.StudyID = "1"
            ds.StudyDate = "20000101"
            ds.StudyTime = "000000"
            ds.AccessionNumber = ""
            ds.ReferringPhysicianName = ""
            ds.StudyDescription = "Med-SegLens synthetic BraTS study"
            ds.Modality = "MR"
            ds.Manufacturer = "Med-SegLens"
            ds.SeriesInstanceUID = series_uid
            ds.SeriesNumber = n + 1
            ds.SeriesDescription = f"BraTS {modality}"
            ds.FrameOfReferenceUID = for_uid
            ds.PositionReferenceIndicator = ""
            ds.InstanceNumber = inst
            ds.ImageType = ["DERIVED", "SECONDARY"]
            ds.ScanningSequence = "SE"
            ds.SequenceVariant = "NONE"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "3D"
            if modality == "t1c":
                ds.ContrastBolusAgent = "GADOLINIUM"
            ds.ImagePositionPatient = [_ds(v) for v in lps[:3, 3] + k * step]
            ds.ImageOrientationPatient = [_ds(v) for v in (*row_cos, *col_cos)]
            ds.PixelSpacing = [_ds(row_spacing), _ds(col_spacing)]
            ds.SliceThickness = _ds(np.linalg.norm(step))
            ds.SpacingBetweenSlices = _ds(np.linalg.norm(step))
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows, ds.Columns = int(data.shape[1]), int(data.shape[0])
            ds.BitsAllocated = 16
            ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 0
            ds.RescaleSlope = _ds(slope)
            ds.RescaleIntercept = _ds(lo)
            ds.RescaleType = "US"
            ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
            ds.save_as(series_dir / f"{inst:04d}.dcm", enforce_file_format=True)
        written[modality] = nz
    return {"study_instance_uid": study_uid, "frame_of_reference_uid": for_uid, "series": written}
