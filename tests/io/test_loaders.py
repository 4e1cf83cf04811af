"""Loaders: BraTS 2023 vs 2021 folders, 4-D files, in-memory uploads, RAS reorientation, find_cases."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from medseglens_core.io import (
    MODALITIES,
    find_cases,
    load_case,
    load_case_4d,
    load_case_from_files,
)
from medseglens_core.io.errors import CaseNotFound, IncompleteCase, InvalidModalityOrder
from tests.io.builders import PATIENT_TEXT, make_arrays, oblique_lps_affine, save


def test_brats2023_and_2021_names_load_to_identical_arrays(tmp_path, write_case):
    images, label = make_arrays()
    label_2021 = label.copy()
    label_2021[label == 3] = 4  # BraTS 2021 ET
    a = load_case(write_case(tmp_path / "a", "brats2023", "BraTS-GLI-00001-000"))
    b = load_case(write_case(tmp_path / "b", "brats2021", "BraTS2021_00001", label=label_2021))
    assert a.provenance["format"] == "brats2023" and b.provenance["format"] == "brats2021"
    assert a.case_id == "BraTS-GLI-00001-000" and b.case_id == "BraTS2021_00001"
    assert a.image.dtype == np.float32 and a.image.shape[0] == 4
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.label, b.label)
    assert set(np.unique(b.label)) == {0, 1, 2, 3}
    np.testing.assert_array_equal(a.geometry.affine, b.geometry.affine)
    assert b.provenance["label_remapped_4_to_3"] is True


def test_arrays_are_ras_canonical_and_map_voxels_to_the_same_world_point(tmp_path, write_case):
    images, label = make_arrays()
    case = load_case(write_case(tmp_path / "c"))
    geo = case.geometry
    assert nib.aff2axcodes(geo.affine) == ("R", "A", "S")
    assert case.provenance["orientation"] == "LPS"
    assert geo.original_shape == (12, 10, 8) and geo.shape == (12, 10, 8)
    np.testing.assert_allclose(geo.spacing, (0.9, 1.2, 2.5), rtol=1e-6)
    rng = np.random.default_rng(1)
    for ijk in rng.integers(0, [12, 10, 8], size=(20, 3)):
        world = geo.original_affine @ np.r_[ijk, 1.0]
        xyz = np.rint(np.linalg.solve(geo.affine, world)[:3]).astype(int)
        for c, m in enumerate(MODALITIES):
            assert case.image[(c, *xyz)] == images[m][tuple(ijk)]
        assert case.label[tuple(xyz)] == label[tuple(ijk)]


def test_case_without_seg_has_no_label(tmp_path, write_case):
    case = load_case(write_case(tmp_path / "c", label=None))
    assert case.label is None
    assert "seg" not in case.provenance["files"]


def test_4d_file_with_declared_order_matches_folder(tmp_path, write_case):
    images, label = make_arrays()
    aff = oblique_lps_affine()
    order = ["flair", "t1", "t2", "t1ce"]  # BraTS 2021-style aliases, shuffled
    canon = {"flair": "t2f", "t1": "t1n", "t2": "t2w", "t1ce": "t1c"}
    stacked = np.stack([images[canon[o]] for o in order], axis=-1)
    path4d = save(stacked, aff, tmp_path / "case4d.nii.gz")
    seg = save(label, aff, tmp_path / "case4d_seg.nii.gz")
    case4d = load_case_4d(path4d, order, label=seg)
    folder = load_case(write_case(tmp_path / "f"))
    assert case4d.case_id == "case4d" and case4d.provenance["modality_order"] == ["t2f", "t1n", "t2w", "t1c"]
    np.testing.assert_array_equal(case4d.image, folder.image)
    np.testing.assert_array_equal(case4d.label, folder.label)


def test_in_memory_bytes_match_folder_and_never_echo_paths(tmp_path, write_case):
    folder = write_case(tmp_path / "secret-patient-dir")
    files = {m: (folder / f"BraTS-GLI-00001-000-{m}.nii.gz").read_bytes() for m in MODALITIES}
    seg = (folder / "BraTS-GLI-00001-000-seg.nii.gz").read_bytes()
    up = load_case_from_files(files, label=seg, case_id="up1", cohort="adult")
    ref = load_case(folder)
    np.testing.assert_array_equal(up.image, ref.image)
    np.testing.assert_array_equal(up.label, ref.label)
    assert up.case_id == "up1" and up.cohort == "adult" and up.provenance["format"] == "files"
    text = repr(up.provenance) + repr(ref.provenance)
    assert "secret-patient-dir" not in text and PATIENT_TEXT.decode() not in text and "db-secret" not in text


def test_in_memory_4d_image_key_requires_order(tmp_path):
    images, _ = make_arrays()
    blob = save(np.stack([images[m] for m in MODALITIES], -1), np.eye(4), tmp_path / "x.nii.gz").read_bytes()
    case = load_case_from_files({"image": blob}, modality_order=list(MODALITIES))
    np.testing.assert_array_equal(case.image[2], images["t2w"])  # identity affine: already RAS
    with pytest.raises(InvalidModalityOrder, match="modality_order"):
        load_case_from_files({"image": blob})
    with pytest.raises(InvalidModalityOrder, match="exactly once"):
        load_case_from_files({"image": blob}, modality_order=["t1n", "t1n", "t2w", "t2f"])


def test_bad_upload_keys_and_missing_folder_files(tmp_path, write_case):
    with pytest.raises(InvalidModalityOrder, match="four modalities"):
        load_case_from_files({"t1n": b"", "t1c": b"", "t2w": b""})
    folder = write_case(tmp_path / "c")
    (folder / "BraTS-GLI-00001-000-t2f.nii.gz").unlink()
    with pytest.raises(IncompleteCase, match=r"missing \['t2f'\]"):
        load_case(folder)
    with pytest.raises(CaseNotFound):
        load_case(tmp_path / "nope")


def test_find_cases_is_recursive_sorted_and_skips_incomplete(tmp_path, write_case):
    write_case(tmp_path / "cohortB" / "case2", "brats2021", "BraTS2021_00002", label=None)
    write_case(tmp_path / "cohortA" / "case1")
    (tmp_path / "cohortA" / "notes").mkdir()
    (tmp_path / "cohortA" / "notes" / "x-t1n.nii.gz").write_bytes(b"")
    assert find_cases(tmp_path) == [tmp_path / "cohortA" / "case1", tmp_path / "cohortB" / "case2"]
    with pytest.raises(CaseNotFound):
        find_cases(tmp_path / "missing")
