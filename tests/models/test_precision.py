"""Network precision: bf16 autocast on CPU (fp16 needs CUDA), SAE codes float32, exact empty edits."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medseglens_core.errors import InvalidInput
from medseglens_core.interventions.apply import apply_spec
from medseglens_core.interventions.cache import PrefixCache
from medseglens_core.interventions.spec import Edit, InterventionSpec
from medseglens_core.models import build_model, check_precision
from medseglens_core.models.card import save_model
from tests.interventions.fakes import IdentityPrepared, ReluSAE
from tests.models.conftest import planted_case, write_case_dir

ARCH_HOOKS = [("unet", "enc1"), ("unet", "bottleneck"), ("unet", "dec1"), ("segformer", "stage2")]


def _model(arch: str):
    torch.manual_seed(0)
    return build_model(arch, input_size=32).eval()


def test_precision_names_and_devices_are_checked():
    model = _model("unet")
    assert model.precision == "fp32"
    with pytest.raises(InvalidInput, match="unknown precision 'int8'"):
        model.set_precision("int8")
    assert check_precision("bf16", "cpu") == "bf16" and check_precision("fp16", "cuda:1") == "fp16"
    with pytest.raises(InvalidInput, match="fp16 needs a CUDA device"):
        check_precision("fp16", "cpu")
    model.set_precision("fp16")  # a name check only: the device is checked where it runs
    with pytest.raises(InvalidInput, match="fp16 needs a CUDA device"), torch.no_grad():
        model(torch.randn(1, 4, 32, 32))


@pytest.mark.parametrize(("arch", "hook"), ARCH_HOOKS)
def test_fp32_is_the_unwrapped_network_and_bf16_runs_under_autocast(arch, hook):
    model = _model(arch)
    x = torch.randn(3, 4, 32, 32)
    with torch.no_grad():
        fp32 = model(x)
        assert torch.equal(fp32, type(model).forward.__wrapped__(model, x))  # fp32: no autocast at all
        model.set_precision("bf16")
        low = model(x)
        p = model.run_prefix(x, hook)
        assert low.dtype == torch.bfloat16 and p.h.dtype == torch.bfloat16
        # an activation edited in float32 goes back to the prefix's dtype: the round trip is exact
        assert torch.equal(model.run_suffix(p, p.h.float()), low)
        assert torch.equal(model.run_suffix(p, p.h), low)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(type(model).forward.__wrapped__(model, x), low)
    agree = (low.float().argmax(1) == fp32.argmax(1)).float().mean()
    assert agree > 0.9  # bf16 keeps ~3 significant digits: the labels barely move
    assert not torch.equal(low.float(), fp32)  # it did run in bf16


@pytest.mark.parametrize("arch", ["unet", "segformer"])
def test_bf16_codes_stay_float32_and_empty_edits_reproduce_the_bf16_prediction(arch):
    model = _model(arch).set_precision("bf16")
    slices = torch.randn(5, 4, 32, 32)
    cache = PrefixCache.build(model, IdentityPrepared(slices), batch_size=2)
    sae = ReluSAE.random(cache.channels, 64)
    with torch.no_grad():
        full = torch.cat([model(slices[i : i + 2]) for i in range(0, 5, 2)]).float()
        codes = sae.encode(cache.chunks[0][2].h.permute(0, 2, 3, 1).reshape(-1, cache.channels))
    assert codes.dtype == torch.float32
    assert torch.equal(cache.baseline_logits, full)
    expected = full.argmax(dim=1).permute(1, 2, 0).numpy().astype(np.uint8)
    for spec in (InterventionSpec(), InterventionSpec(edits=[Edit(latent=3, op="scale", value=1.0)])):
        res = apply_spec(cache, sae, spec)
        assert np.array_equal(res.edited_labels, expected) and res.changed_voxels == 0
    hot = int(codes.sum(0).argmax())
    res = apply_spec(cache, sae, InterventionSpec(edits=[Edit(latent=hot, op="add", value=50.0)]))
    assert res.changed_tokens > 0  # a real edit still moves the bf16 network


def test_segment_cli_precision(tmp_path):
    from service.cli import _register, app

    _register()
    case = planted_case(shape=(28, 30, 8), case_id="p0")
    write_case_dir(case, tmp_path / "p0", np.diag([2.0, 2.0, 2.0, 1.0]))
    torch.manual_seed(0)
    net = build_model("unet", input_size=32, channels=(4, 8, 16), strides=(2, 2))
    save_model(net, {"id": "tiny"}, tmp_path / "zoo" / "tiny")
    args = ["segment", "--model", str(tmp_path / "zoo" / "tiny"), "--case", str(tmp_path / "p0")]
    args += ["--device", "cpu", "--json"]
    runs = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.nii.gz"
        result = CliRunner().invoke(app, [*args, "--out", str(out), "--precision", precision])
        assert result.exit_code == 0, result.output
        runs[precision] = json.loads(result.output)
        assert runs[precision]["provenance"]["precision"] == precision
    assert runs["bf16"]["provenance"]["model_sha256"] == runs["fp32"]["provenance"]["model_sha256"]
    # through the console entry point, as a user runs it: one line, exit 2, nothing written
    cmd = [sys.executable, "-c", "from service.cli import main; main()", *args]
    bad = subprocess.run([*cmd, "--out", str(tmp_path / "x.nii.gz"), "--precision", "fp16"],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 2 and len(lines) == 1 and "fp16 needs a CUDA device" in lines[0], bad.stderr
    assert not (tmp_path / "x.nii.gz").exists()
