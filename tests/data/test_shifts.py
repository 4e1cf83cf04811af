"""The acquisition-shift library: deterministic per seed, labels and brain mask untouched,
each kind doing what it says on hand-made volumes; the folder writer and the CLI."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medseglens_core.data.shifts import SHIFTS, apply_shift, shift_folder
from medseglens_core.errors import InvalidInput, NotFound
from tests.models.conftest import planted_case, write_case_dir

T2W, T2F = 2, 3


@pytest.mark.parametrize("kind", list(SHIFTS))
def test_every_kind_is_deterministic_keeps_labels_and_brain_and_changes_the_image(kind):
    case = planted_case(seed=1)
    a = apply_shift(case, kind, seed=3)
    assert a.dtype == np.float32 and a.shape == case.image.shape
    assert np.array_equal(a, apply_shift(case, kind, seed=3))
    brain = np.any(case.image != 0, axis=0)
    assert (a[:, ~brain] == 0).all()
    assert not np.allclose(a, case.image)
    if kind not in ("thick_slices", "modality_swap", "bright_compression"):  # these use no randomness
        assert not np.array_equal(a, apply_shift(case, kind, seed=4))


def test_modality_swap_exchanges_t2w_and_flair_exactly():
    case = planted_case()
    out = apply_shift(case, "modality_swap")
    assert np.array_equal(out[T2W], case.image[T2F]) and np.array_equal(out[T2F], case.image[T2W])
    assert np.array_equal(out[:2], case.image[:2])


def test_thick_slices_average_slabs_and_leave_a_z_constant_volume_alone():
    case = planted_case(shape=(20, 20, 10))
    out = apply_shift(case, "thick_slices", severity=1.0)  # slabs of 5 slices
    np.testing.assert_allclose(
        out[..., 0], case.image[..., :5].mean(axis=3) * (case.image[..., 0] != 0), atol=1e-6
    )
    flat = planted_case(shape=(20, 20, 10))
    flat.image[:] = flat.image[..., 5:6]  # every slice equal
    assert np.allclose(apply_shift(flat, "thick_slices"), flat.image, atol=1e-6)


def test_bright_compression_only_touches_the_bright_end_of_t2w_and_flair():
    case = planted_case()
    out = apply_shift(case, "bright_compression", severity=1.0)
    assert np.array_equal(out[:2], case.image[:2])
    brain = np.any(case.image != 0, axis=0)
    knee = np.quantile(case.image[T2F][brain], 0.7)
    low = case.image[T2F] <= knee
    np.testing.assert_allclose(out[T2F][low], case.image[T2F][low], rtol=1e-6)
    high = case.image[T2F] > knee
    assert (out[T2F][high] < case.image[T2F][high]).all()


def test_rician_noise_has_the_stated_strength():
    case = planted_case(shape=(40, 40, 12))
    out = apply_shift(case, "rician_noise", severity=0.4)
    brain = np.any(case.image != 0, axis=0)
    sigma = 0.25 * 0.4 * np.quantile(case.image[0][brain], 0.99)
    diff = (out[0] - case.image[0])[brain]
    assert 0.6 * sigma < diff.std() < 1.4 * sigma


def test_bad_kind_and_severity_are_named():
    with pytest.raises(InvalidInput, match="unknown shift kind 'blur'.*rician_noise"):
        apply_shift(planted_case(), "blur")
    with pytest.raises(InvalidInput, match="severity"):
        apply_shift(planted_case(), "bias_field", severity=0.0)


def test_shift_folder_writes_cases_on_their_grid_and_refuses_to_overwrite(tmp_path):
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    for i in range(2):
        write_case_dir(planted_case(seed=i, case_id=f"c{i}"), tmp_path / "src" / f"c{i}", affine)
    ids = shift_folder("bias_field", tmp_path / "src", tmp_path / "out", seed=7)
    assert ids == ["c0", "c1"]
    manifest = json.loads((tmp_path / "out" / "shift.json").read_text())
    assert manifest["kind"] == "bias_field" and manifest["seed"] == 7 and manifest["cases"] == ids
    seg = nib.load(tmp_path / "out" / "c1" / "c1-seg.nii.gz")
    src_seg = nib.load(tmp_path / "src" / "c1" / "c1-seg.nii.gz")
    assert np.array_equal(np.asarray(seg.dataobj), np.asarray(src_seg.dataobj))
    np.testing.assert_allclose(seg.affine, affine)
    with pytest.raises(InvalidInput, match="not empty"):
        shift_folder("bias_field", tmp_path / "src", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NotFound, match="holds no BraTS case"):
        shift_folder("bias_field", tmp_path / "empty", tmp_path / "out2")
    assert not (tmp_path / "out2").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "out", "src"]  # no staging left


def test_cli_shift_writes_the_folder_and_lists_the_kinds(tmp_path):
    from service.cli import _register, app

    _register()
    write_case_dir(planted_case(case_id="c0"), tmp_path / "src" / "c0", np.eye(4))
    args = ["shift", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--seed", "2"]
    r = CliRunner().invoke(app, [*args, "--kind", "motion_ghosting", "--severity", "0.5"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["cases"] == 1 and (tmp_path / "out" / "c0" / "c0-t2f.nii.gz").is_file()
    help_text = CliRunner().invoke(app, ["shift", "--help"]).output
    assert sum(k in help_text for k in SHIFTS) >= 6
