"""Core DICOM reader/writer and SEG builder: geometry against the nibabel/dcm2niix convention, rescale,
resampling onto t1c's grid, and the SEG's required modules."""

from __future__ import annotations

import io
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest

from medseglens_core.io.dicom import DicomError, datasets_from_bytes, read_study, write_study
from medseglens_core.io.dicom_seg import build_seg, seg_bytes, seg_label_map

MODS = ("t1n", "t1c", "t2w", "t2f")
SHAPE = (12, 10, 8)


def _volumes(affine: np.ndarray, shape=SHAPE, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {m: ((rng.random(shape) * 1000 - 200 * i).astype(np.float32), affine) for i, m in enumerate(MODS)}


def _read(folder: Path, **kw):
    return read_study(
        datasets_from_bytes((p.name, p.read_bytes()) for p in sorted(folder.rglob("*.dcm"))), **kw
    )


def _oblique(spacing=(0.9, 1.1, 2.5), angle=0.3) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]) @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    aff = np.eye(4)
    aff[:3, :3] = rot * np.asarray(spacing)
    aff[:3, 3] = [-40.5, 12.25, -7.0]
    return aff


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize(
    "affine",
    [np.diag([1.0, 1.0, 1.0, 1.0]), np.diag([-2.0, -2.0, 3.0, 1.0]), _oblique()],
    ids=["ras", "lps", "oblique"],
)
def test_write_read_round_trip_gives_the_affine_and_voxels(tmp_path, affine, reverse):
    vols = _volumes(affine)
    write_study(vols, tmp_path, case_id="RT", reverse_files=reverse)
    study = _read(tmp_path)
    assert list(study.series) == list(MODS) and study.resampled == []
    for m, (data, _) in vols.items():
        s = study.series[m]
        np.testing.assert_allclose(s.affine, affine, atol=1e-5)
        step = (data.max() - data.min()) / 65535  # uint16 storage + rescale slope/intercept
        np.testing.assert_allclose(s.data, data, atol=step * 0.51 + 1e-3)


def test_affine_follows_the_nibabel_dicom_convention(tmp_path):
    """Against nibabel's own DICOM wrapper (the dcm2niix convention): same affine for the stack."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "highly experimental" on import
        from nibabel.nicom import dicomwrappers

    affine = _oblique()
    write_study(_volumes(affine), tmp_path, case_id="NIB", reverse_files=True)
    study = _read(tmp_path)
    first = study.series["t1c"].datasets[0]
    # nibabel's wrapper indexes the pixel array [row, column] (LPS); our voxel order is dcm2niix's
    # [column, row, slice], so its first two affine columns are ours swapped
    wf = dicomwrappers.wrapper_from_data(pydicom.dcmread(_file_of(tmp_path, first.SOPInstanceUID)))
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ study.affine
    np.testing.assert_allclose(wf.affine[:3, [1, 0]], lps[:3, :2], atol=1e-5)
    np.testing.assert_allclose(wf.affine[:3, 3], lps[:3, 3], atol=1e-4)


def _file_of(folder: Path, sop_uid: str) -> Path:
    for p in folder.rglob("*.dcm"):
        if pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID == sop_uid:
            return p
    raise AssertionError(sop_uid)


def test_rescale_slope_and_intercept_are_applied(tmp_path):
    vols = {m: (np.full(SHAPE, 7.0 + i, np.float32), np.eye(4)) for i, m in enumerate(MODS)}
    vols["t1c"][0][0, 0, 0] = -3.0
    write_study(vols, tmp_path, case_id="RS")
    for p in next(tmp_path.glob("*-t1c")).glob("*.dcm"):
        ds = pydicom.dcmread(p)
        assert float(ds.RescaleSlope) != 1.0 or float(ds.RescaleIntercept) != 0.0
    t1c = _read(tmp_path).series["t1c"].data
    assert t1c[0, 0, 0] == pytest.approx(-3.0, abs=1e-3) and t1c[5, 5, 5] == pytest.approx(8.0, abs=1e-3)


def test_a_series_on_another_spacing_is_resampled_onto_t1c(tmp_path):
    vols = _volumes(np.diag([2.0, 2.0, 2.0, 1.0]))
    coarse = np.diag([4.0, 4.0, 2.0, 1.0])
    vols["t2w"] = (np.full((6, 5, 8), 100.0, np.float32), coarse)  # same extent, half the in-plane samples
    write_study(vols, tmp_path, case_id="RES")
    study = _read(tmp_path)
    assert study.resampled == ["t2w"]
    assert study.series["t2w"].data.shape == SHAPE
    np.testing.assert_allclose(study.series["t2w"].affine, study.affine)
    np.testing.assert_allclose(study.series["t2w"].data, 100.0, atol=1e-2)
    with pytest.raises(DicomError, match="not on t1c's grid"):
        _read(tmp_path, allow_resample=False)


def test_seg_has_the_required_modules_and_reads_back(tmp_path):
    write_study(_volumes(np.diag([2.0, 2.0, 2.0, 1.0])), tmp_path, case_id="SEG", reverse_files=True)
    src = _read(tmp_path).series["t1c"].datasets
    mask = np.zeros(SHAPE, np.uint8)
    mask[2:6, 3:7, 2:5] = 2
    mask[3:5, 4:6, 3] = 3
    mask[4, 5, 3] = 1
    for kind in ("binary", "labelmap"):
        raw = seg_bytes(build_seg(src, mask, model_id="m", weights_sha256="a" * 64, segmentation_type=kind))
        ds = pydicom.dcmread(io.BytesIO(raw))
        required = {
            "SOP Common": ("SOPClassUID", "SOPInstanceUID"),
            "Patient": ("PatientName", "PatientID"),
            "General Study": ("StudyInstanceUID", "StudyDate", "StudyTime"),
            "General Series / Segmentation Series": ("Modality", "SeriesInstanceUID", "SeriesNumber"),
            "Frame of Reference": ("FrameOfReferenceUID",),
            "Enhanced General Equipment": (
                "Manufacturer",
                "ManufacturerModelName",
                "DeviceSerialNumber",
                "SoftwareVersions",
            ),
            "General Image / Image Pixel": (
                "InstanceNumber",
                "Rows",
                "Columns",
                "BitsAllocated",
                "PixelData",
            ),
            "Segmentation Image": ("ImageType", "SegmentationType", "SegmentSequence", "ContentLabel"),
            "Multi-frame Functional Groups": (
                "SharedFunctionalGroupsSequence",
                "PerFrameFunctionalGroupsSequence",
                "NumberOfFrames",
            ),
            "Multi-frame Dimension": ("DimensionOrganizationSequence", "DimensionIndexSequence"),
            "Common Instance Reference": ("ReferencedSeriesSequence",),
        }
        missing = {mod: [k for k in keys if k not in ds] for mod, keys in required.items()}
        assert not any(missing.values()), missing
        assert ds.SOPClassUID in ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7")
        assert ds.FrameOfReferenceUID == src[0].FrameOfReferenceUID
        assert ds.SegmentationType == kind.upper()
        seg = hd.seg.segread(io.BytesIO(raw))  # highdicom's own read-back
        np.testing.assert_array_equal(seg_label_map(seg, src), mask)


def test_seg_refuses_a_mask_off_the_source_grid(tmp_path):
    write_study(_volumes(np.eye(4)), tmp_path, case_id="BAD")
    src = _read(tmp_path).series["t1c"].datasets
    with pytest.raises(Exception, match="not the source series"):
        build_seg(src, np.zeros((3, 3, 3), np.uint8), model_id="m", weights_sha256="")
