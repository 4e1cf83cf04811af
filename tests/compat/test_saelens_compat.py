"""Freshly trained SAEs load in the real sae-lens and encode RAW hooked activations to our codes.

Needs the separate sae-lens venv (``make compat``: ``.venv-compat``, or the python named by
``MEDSEGLENS_COMPAT_PYTHON``); skipped without it, except in CI (``MEDSEGLENS_REQUIRE_SERVICES=1``)
where its absence fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medseglens_core.models.base import build_model
from medseglens_core.models.card import save_model
from medseglens_core.sae.collect import collect_activations
from medseglens_core.sae.io import load_sae
from medseglens_core.sae.pipeline import train_sae_for_model
from tests.sae.test_collect_fidelity import write_case

ROOT = Path(__file__).resolve().parents[2]
PROBE = Path(__file__).with_name("saelens_probe.py")
SIZE = 32


def _compat_python() -> str:
    py = os.environ.get("MEDSEGLENS_COMPAT_PYTHON") or str(ROOT / ".venv-compat" / "bin" / "python")
    ok = (
        Path(py).is_file()
        and subprocess.run([py, "-c", "import sae_lens"], capture_output=True).returncode == 0
    )
    if not ok:
        msg = f"no sae-lens venv at {py}; run `make compat`"
        if os.environ.get("MEDSEGLENS_REQUIRE_SERVICES") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return py


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny U-Net, its cases, its raw hooked tokens and one freshly trained SAE per architecture."""
    root = tmp_path_factory.mktemp("compat")
    torch.manual_seed(0)
    model = build_model("unet", input_size=SIZE, channels=(4, 8, 16), strides=(2, 2)).eval()
    save_model(model, {"id": "tiny-unet"}, root / "m")
    for j in range(3):
        write_case(root / "data" / "adult" / f"adult{j}", f"adult{j}", seed=j)
    cases = sorted((root / "data" / "adult").iterdir())
    raw = collect_activations(model, "bottleneck", cases, root / "acts", dtype="float32")
    x = np.concatenate([np.asarray(raw.tokens(i)) for i in range(len(raw.shards))]).astype(np.float32)
    saes = {}
    for arch in ("batchtopk", "topk", "relu"):
        train_sae_for_model(
            root / "m", root / "data", ["adult"], "bottleneck", arch, 4, 4, root / arch,
            token_budget=None, steps=30, device="cpu", fidelity_cases=1,
        )  # fmt: skip
        saes[arch] = root / arch
    return root, x, saes


@pytest.mark.parametrize("arch", ["batchtopk", "topk", "relu"])
def test_sae_lens_loads_our_sae_and_gives_our_codes_on_raw_activations(trained, arch):
    py = _compat_python()
    root, x, saes = trained
    sae, card = load_sae(saes[arch])
    assert card["activation_scale"] != 1.0  # the scale really has to be folded in
    with torch.no_grad():
        z = sae.encode(torch.from_numpy(x))
        xhat = sae.decode(z)
    assert (z > 0).any()
    files = {}
    for name, arr in (("x", x), ("z", z.numpy()), ("xhat", xhat.numpy())):
        files[name] = root / f"{arch}-{name}.npy"
        np.save(files[name], arr)
    res = subprocess.run(
        [py, str(PROBE), str(saes[arch]), str(files["x"]), str(files["z"]), str(files["xhat"])],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    print(arch, out, file=sys.stderr)
    assert out["sae_lens"].startswith("6.")
    assert out["architecture"] == {"batchtopk": "jumprelu", "topk": "topk", "relu": "standard"}[arch]
    assert out["support_differs"] == 0
    assert out["max_dz"] <= 1e-6 * max(1.0, out["max_z"]), out
    assert out["max_dxhat"] <= 1e-6 * max(1.0, out["max_xhat"]), out
