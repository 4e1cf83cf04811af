"""SAE storage: SAELens tensor names, round trip, checksum and missing-file errors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from medseglens_core.sae.base import SAEConfig, build_sae, registered_architectures
from medseglens_core.sae.errors import CorruptSAE, SAENotFound
from medseglens_core.sae.io import load_sae, save_sae, sha256_file


@pytest.mark.parametrize("arch", registered_architectures())
def test_save_load_round_trip(tmp_path, arch):
    sae = build_sae(SAEConfig(arch=arch, d_in=8, d_sae=32, k=2, activation_scale=2.5, seed=4))
    with torch.no_grad():
        sae.b_enc.normal_()
        sae.b_dec.normal_()
        sae.threshold.fill_(0.7)
    card = save_sae(
        sae,
        tmp_path / "sae1",
        {
            "model_id": "m1",
            "hook": "stage3",
            "cohorts": ["adult"],
            "case_ids": ["c1"],
            "metrics": {"explained_variance": 0.9, "dead_fraction": 0.01},
        },
    )
    tensors = load_file(str(tmp_path / "sae1" / "sae_weights.safetensors"))
    assert sorted(tensors) == ["W_dec", "W_enc", "b_dec", "b_enc", "threshold"]
    assert tensors["W_enc"].shape == (8, 32) and tensors["W_dec"].shape == (32, 8)
    assert card["weights_sha256"] == sha256_file(tmp_path / "sae1" / "sae_weights.safetensors")
    assert card["architecture"] == arch and card["d_sae"] == 32 and card["id"] == "sae1"
    loaded, card2 = load_sae(tmp_path / "sae1")
    assert card2 == json.loads((tmp_path / "sae1" / "card.json").read_text()) == card
    assert loaded.cfg == sae.cfg and type(loaded) is type(sae)
    for name, p in sae.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], p)
    x = torch.randn(20, 8)
    assert torch.equal(loaded(x), sae(x))


def test_corrupt_and_missing(tmp_path):
    sae = build_sae(SAEConfig(d_in=8, d_sae=32, k=2))
    save_sae(sae, tmp_path / "s", {})
    with open(tmp_path / "s" / "sae_weights.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\x00\x01\x02\x03")
    with pytest.raises(CorruptSAE):
        load_sae(tmp_path / "s")
    with pytest.raises(SAENotFound):
        load_sae(tmp_path / "nothing")
