"""Volume inference on the input grid, model save/load, and the segment CLI end to end."""

from __future__ import annotations

import hashlib
import json

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medseglens_core.io import load_case
from medseglens_core.models import build_model
from medseglens_core.models.card import CorruptModel, load_model, save_model
from medseglens_core.models.inference import resolve_device, segment_case
from tests.models.conftest import planted_case, write_case_dir


def _tiny_unet():
    torch.manual_seed(0)
    return build_model("unet", input_size=32, channels=(4, 8, 16), strides=(2, 2)).eval()


def test_label_map_keeps_grid_and_affine_of_an_oblique_anisotropic_input(tmp_path, oblique_affine):
    case = planted_case(shape=(30, 34, 9))
    write_case_dir(case, tmp_path / "c0", oblique_affine)
    loaded = load_case(tmp_path / "c0")
    assert loaded.geometry.shape != (30, 34, 9)  # the file is not RAS: the case grid is permuted
    seg = segment_case(_tiny_unet(), loaded, device="cpu", return_probs=True)
    assert seg.labels.shape == loaded.geometry.shape and seg.labels.dtype == np.uint8
    assert seg.probs.shape == (4, *loaded.geometry.shape)
    assert np.allclose(seg.probs.sum(axis=0), 1.0, atol=1e-5)
    assert np.all(seg.labels[~seg.prepared.brain_mask] == 0)

    from medseglens_core.io import write_label_map

    write_label_map(seg.labels, loaded.geometry, tmp_path / "seg.nii.gz")
    out = nib.load(tmp_path / "seg.nii.gz")
    assert out.shape == (30, 34, 9)
    assert np.allclose(out.affine, oblique_affine, atol=1e-5)
    # the labels on disk are the RAS labels put back in the file's voxel order
    assert np.array_equal(np.asarray(out.dataobj), loaded.geometry.to_original(seg.labels))


def test_resolve_device():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu").type == "cpu"


@pytest.mark.parametrize("arch", ["unet", "segformer"])
def test_save_load_round_trip(tmp_path, arch):
    torch.manual_seed(0)
    model = build_model(arch, input_size=32).eval()
    card = save_model(model, {"id": "m1", "training": {"cohorts": ["adult"]}}, tmp_path / "m1")
    loaded, card2 = load_model(tmp_path / "m1")
    assert card2 == card and card2["architecture"] == arch and card2["training"]["cohorts"] == ["adult"]
    assert card2["default_hook"] in card2["hook_points"] and len(card2["weights_sha256"]) == 64
    x = torch.randn(2, 4, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    (tmp_path / "m1" / "weights.safetensors").write_bytes(b"junk")
    with pytest.raises(CorruptModel, match="sha256"):
        load_model(tmp_path / "m1")


def test_segment_cli_end_to_end(tmp_path):
    from service.cli import _register, app

    _register()
    case = planted_case(shape=(28, 30, 8), case_id="cli0")
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    write_case_dir(case, tmp_path / "cli0", affine)
    save_model(_tiny_unet(), {"id": "tiny"}, tmp_path / "zoo" / "tiny")
    out = tmp_path / "seg.nii.gz"
    args = ["segment", "--model", str(tmp_path / "zoo" / "tiny"), "--case", str(tmp_path / "cli0")]
    result = CliRunner().invoke(app, [*args, "--out", str(out), "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    written = nib.load(out)
    assert written.shape == (28, 30, 8) and np.allclose(written.affine, affine)
    labels = np.asarray(written.dataobj)
    # volumes are those of the written map: voxels x 8 mm^3 / 1000
    assert report["volumes_ml"]["WT"] == pytest.approx((labels > 0).sum() * 8 / 1000)
    assert set(report["scores"]["regions"]) == {"WT", "TC", "ET"}
    # no zoo beside the model: provenance of the weights, an uncalibrated OOD block saying why
    sha = hashlib.sha256((tmp_path / "zoo" / "tiny" / "weights.safetensors").read_bytes()).hexdigest()
    assert report["provenance"]["model_id"] == "tiny" and report["provenance"]["model_sha256"] == sha
    assert report["ood"]["calibrated"] is False and "--zoo" in report["ood"]["note"]
    text = CliRunner().invoke(app, [*args, "--out", str(out), "--device", "cpu"])
    assert text.exit_code == 0 and "Dice" in text.output and "mL" in text.output
