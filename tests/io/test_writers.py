"""Writers put arrays back on the ORIGINAL grid and affine, readable by nibabel and SimpleITK."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from medseglens_core.errors import InvalidInput
from medseglens_core.io import MODALITIES, Geometry, load_case, write_label_map, write_volume
from medseglens_core.io.errors import GeometryMismatch
from tests.io.builders import make_arrays, oblique_lps_affine


def permuted_oblique_affine() -> np.ndarray:
    """Voxel axes run roughly P, S, L (a permutation AND flips of RAS), rotated, 0.9/1.2/2.5 mm."""
    aff = oblique_lps_affine()
    lps = aff[:3, :3].copy()
    # voxel axis 0 -> P (0.9 mm), 1 -> S (1.2 mm), 2 -> L (2.5 mm)
    cols = [lps[:, 1] / 1.2 * 0.9, lps[:, 2] / 2.5 * 1.2, lps[:, 0] / 0.9 * 2.5]
    aff[:3, :3] = np.stack(cols, axis=1)
    return aff


def sitk_affine_ras(img: sitk.Image) -> np.ndarray:
    """SimpleITK (LPS world) geometry as a RAS voxel-to-world affine."""
    direction = np.array(img.GetDirection()).reshape(3, 3)
    aff = np.eye(4)
    aff[:3, :3] = direction @ np.diag(img.GetSpacing())
    aff[:3, 3] = img.GetOrigin()
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ aff


@pytest.fixture
def oblique_case(tmp_path, write_case):
    aff = permuted_oblique_affine()
    assert nib.aff2axcodes(aff) == ("P", "S", "L")
    return load_case(write_case(tmp_path / "in", affine=aff)), aff


def test_label_map_round_trips_through_nibabel_and_simpleitk(tmp_path, oblique_case):
    case, aff = oblique_case
    _, label = make_arrays()
    assert case.geometry.shape == (8, 12, 10)  # RAS order: L/R axis was the file's third
    np.testing.assert_allclose(case.geometry.spacing, (2.5, 0.9, 1.2), rtol=1e-6)
    out = tmp_path / "out" / "pred-seg.nii.gz"
    write_label_map(case.label, case.geometry, out)

    back = nib.load(out)
    np.testing.assert_array_equal(np.asarray(back.dataobj), label)
    assert back.get_data_dtype() == np.uint8
    np.testing.assert_allclose(back.affine, aff, atol=1e-6)
    np.testing.assert_allclose(back.get_qform(), aff, atol=1e-5)
    assert int(back.header["sform_code"]) == 1 and int(back.header["qform_code"]) == 1
    for field in ("descrip", "aux_file", "db_name", "intent_name"):
        assert back.header[field].item() == b"", field  # the input's descrip/db_name were set

    itk = sitk.ReadImage(str(out))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(itk).transpose(2, 1, 0), label)
    np.testing.assert_allclose(sitk_affine_ras(itk), aff, atol=1e-4)


def test_volume_with_channels_round_trips(tmp_path, oblique_case):
    case, aff = oblique_case
    images, _ = make_arrays()
    out = tmp_path / "maps.nii"
    write_volume(np.moveaxis(case.image, 0, -1), case.geometry, out)
    back = nib.load(out)
    assert back.shape == (12, 10, 8, 4) and back.get_data_dtype() == np.float32
    np.testing.assert_array_equal(
        back.get_fdata(dtype=np.float32), np.stack([images[m] for m in MODALITIES], -1)
    )
    np.testing.assert_allclose(back.affine, aff, atol=1e-6)


def test_writes_are_atomic_and_validate(tmp_path, oblique_case):
    case, _ = oblique_case
    out = tmp_path / "w" / "seg.nii.gz"
    write_label_map(case.label, case.geometry, out)
    write_label_map(np.zeros_like(case.label), case.geometry, out)  # replaces in place
    assert not np.asarray(nib.load(out).dataobj).any()
    with pytest.raises(GeometryMismatch, match=r"not on the case grid \(8, 12, 10\)"):
        write_label_map(case.label[:-1], case.geometry, tmp_path / "w" / "bad.nii.gz")
    with pytest.raises(InvalidInput, match="0..255"):
        write_label_map(case.label.astype(np.int16) - 1, case.geometry, tmp_path / "w" / "neg.nii.gz")
    with pytest.raises(InvalidInput, match=r"\.nii\.gz or \.nii"):
        write_volume(case.image[0], case.geometry, tmp_path / "w" / "x.png")
    assert sorted(p.name for p in (tmp_path / "w").iterdir()) == ["seg.nii.gz"]  # no temp files left


@pytest.mark.parametrize("perm", list(itertools.permutations(range(3)))[::2])
@pytest.mark.parametrize("flips", [(1, 1, 1), (-1, 1, -1), (-1, -1, -1)])
def test_geometry_to_original_inverts_to_ras_exactly(perm, flips):
    aff = np.eye(4)
    aff[:3, :3] = np.diag([0.8, 1.0, 3.0])[:, perm] * np.array(flips)
    aff[:3, 3] = [5.0, -7.0, 11.0]
    shape = (5, 6, 7)
    geo = Geometry.from_affine(aff, shape)
    arr = np.random.default_rng(0).random((*shape, 2))
    ras = geo.to_ras(arr)
    assert nib.aff2axcodes(geo.affine) == ("R", "A", "S")
    assert ras.shape[:3] == geo.shape
    np.testing.assert_array_equal(geo.to_original(ras), arr)
    # The voxel at RAS index v and the original voxel it came from sit at the same world point.
    v = np.array([1, 2, 3])
    orig = np.rint(np.linalg.solve(aff, geo.affine @ np.r_[v, 1.0])[:3]).astype(int)
    assert ras[tuple(v)][0] == arr[tuple(orig)][0]
