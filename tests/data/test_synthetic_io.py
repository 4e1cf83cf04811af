"""Synthetic cohorts on disk: BraTS-2023 folders + dataset.json, the CLI, the montage, and the
numerical helpers (thick-slice resampling, white-matter path length) against hand-computed answers."""

from __future__ import annotations

import json
import sys

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medseglens_core.data.synthetic import (
    MODALITIES,
    case_seed,
    generate_case,
    get_cohort,
    load_templates,
    write_cohort,
)
from medseglens_core.data.synthetic.imaging import thick_slice_matrix
from medseglens_core.data.synthetic.lesion import _geodesic
from medseglens_core.reports.montage import collect_rows


def test_write_cohort_writes_brats2023_folders_that_match_generate_case(tmp_path):
    folders = write_cohort(tmp_path, "pediatric", 2, seed=3, resolution=2)
    assert [f.name for f in folders] == ["SYN-PEDIATRIC-s3-0000", "SYN-PEDIATRIC-s3-0001"]
    meta = json.loads((tmp_path / "dataset.json").read_text())
    assert meta["cohort"] == "pediatric"
    assert meta["channel_names"] == {"0": "t1n", "1": "t1c", "2": "t2w", "3": "t2f"}
    assert meta["labels"] == {"background": 0, "NCR": 1, "SNFH": 2, "ET": 3}
    assert meta["case_ids"] == [f.name for f in folders]
    assert meta["params"]["head_scale"] == [0.86, 0.94]
    assert meta["resolution_mm"] == 2

    cid = folders[1].name
    expected = generate_case(get_cohort("pediatric"), case_seed(3, 1, "pediatric"), 2)
    affine = load_templates(2).affine
    for m in MODALITIES:
        img = nib.load(folders[1] / f"{cid}-{m}.nii.gz")
        assert img.get_data_dtype() == np.float32
        np.testing.assert_array_equal(img.affine, affine)
        np.testing.assert_array_equal(np.asarray(img.dataobj), expected.images[m])
    seg = nib.load(folders[1] / f"{cid}-seg.nii.gz")
    assert seg.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asarray(seg.dataobj), expected.label)
    assert sorted(p.name for p in folders[1].iterdir()) == sorted(
        f"{cid}-{s}.nii.gz" for s in (*MODALITIES, "seg")
    )


def test_thick_slice_matrix_keeps_constants_and_linear_ramps_and_blurs_z():
    mat = thick_slice_matrix(z0=10, nz=40, res=1.0, thickness=5.0, offset=2.0)
    np.testing.assert_allclose(mat.sum(axis=1), 1.0, atol=1e-5)  # a constant stays constant
    ramp = np.arange(40, dtype=np.float64)
    # Slab averaging + linear interpolation is exact on linear profiles between the outer slab centres.
    np.testing.assert_allclose((mat @ ramp)[5:-5], ramp[5:-5], atol=1e-4)
    impulse = np.zeros(40)
    impulse[20] = 1.0
    spread = mat @ impulse
    assert (spread > 1e-6).sum() >= 5  # one 1 mm voxel smears over about two 5 mm slabs
    np.testing.assert_allclose(spread.sum(), 1.0, atol=0.05)


def test_white_matter_path_length_matches_hand_computed_distances():
    seed = np.zeros((9, 9, 1), dtype=bool)
    seed[0, 0, 0] = True
    cost = np.full(seed.shape, 2.0, dtype=np.float32)
    t = _geodesic(seed, cost, n_iter=20)
    assert t[3, 4, 0] == pytest.approx(2.0 * 7)  # 6-neighbour (city-block) path, 2 mm per step
    cost[2, :8, 0] = 1e4  # a wall (CSF) with a gap at y = 8
    t = _geodesic(seed, cost, n_iter=40)
    assert t[4, 0, 0] == pytest.approx(2.0 * (8 + 2 + 8 + 2))  # around the wall through the gap


def test_cli_synth_then_montage(tmp_path):
    from service.cli import _register, app

    _register()
    runner = CliRunner()
    for cohort in ("healthy", "ssa"):
        res = runner.invoke(
            app,
            [
                "synth",
                "--cohort",
                cohort,
                "--n",
                "1",
                "--seed",
                "0",
                "--resolution",
                "2",
                "--out",
                str(tmp_path / cohort),
            ],
        )
        assert res.exit_code == 0, res.output
        assert (
            tmp_path / cohort / f"SYN-{cohort.upper()}-s0-0000" / f"SYN-{cohort.upper()}-s0-0000-t2f.nii.gz"
        ).is_file()
    res = runner.invoke(
        app, ["synth", "--cohort", "ssa", "--n", "1", "--set", "snr=5", "--out", str(tmp_path / "o")]
    )
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "o" / "dataset.json").read_text())["params"]["snr"] == 5.0

    rows = collect_rows(tmp_path)
    assert [r.cohort for r in rows] == ["ssa", "ssa", "healthy"]  # canonical preset order
    assert (rows[0].label > 0).any() and not (rows[2].label > 0).any()
    seg = np.asarray(
        nib.load(tmp_path / "ssa" / f"{rows[0].case_id}" / f"{rows[0].case_id}-seg.nii.gz").dataobj
    )
    assert rows[0].z == int(np.argmax((seg > 0).sum(axis=(0, 1))))  # the slice with the most tumour

    out = tmp_path / "montage.png"
    res = runner.invoke(app, ["montage", "--data", str(tmp_path), "--out", str(out)])
    assert res.exit_code == 0, res.output
    import matplotlib.image

    png = matplotlib.image.imread(out)
    assert png.shape[0] > 300 and png.shape[1] > 600  # 3 rows x 5 columns


def test_cli_unknown_cohort_is_one_line_error(tmp_path, monkeypatch, capsys):
    from service.cli import main

    monkeypatch.setattr(
        sys, "argv", ["medseglens", "synth", "--cohort", "martian", "--out", str(tmp_path / "x")]
    )
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code != 0
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "martian" in err and "adult" in err
    assert not (tmp_path / "x").exists()
