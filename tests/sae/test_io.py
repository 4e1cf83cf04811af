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
    # SAELens strict-loads the state dict: only BatchTopK (stored as jumprelu) has a threshold
    extra = ["threshold"] if arch == "batchtopk" else []
    assert sorted(tensors) == sorted(["W_dec", "W_enc", "b_dec", "b_enc", *extra])
    assert tensors["W_enc"].shape == (8, 32) and tensors["W_dec"].shape == (32, 8)
    # the activation scale is folded in (raw activation space), as SAELens folds its own
    torch.testing.assert_close(tensors["W_enc"], sae.W_enc.detach() * 2.5)
    torch.testing.assert_close(tensors["W_dec"], sae.W_dec.detach() / 2.5)
    torch.testing.assert_close(tensors["b_dec"], sae.b_dec.detach() / 2.5)
    cfg = json.loads((tmp_path / "sae1" / "cfg.json").read_text())
    assert cfg["architecture"] == {"batchtopk": "jumprelu", "topk": "topk", "relu": "standard"}[arch]
    assert cfg["weights_space"] == "raw" and cfg["normalize_activations"] == "none"
    assert cfg["metadata"]["sae_lens_version"].startswith("6.") and cfg["activation_scale"] == 2.5
    assert card["weights_sha256"] == sha256_file(tmp_path / "sae1" / "sae_weights.safetensors")
    assert card["architecture"] == arch and card["d_sae"] == 32 and card["id"] == "sae1"
    loaded, card2 = load_sae(tmp_path / "sae1")
    assert card2 == json.loads((tmp_path / "sae1" / "card.json").read_text()) == card
    assert loaded.cfg == sae.cfg and type(loaded) is type(sae)
    # un-folding rounds once more: equal to float32 precision (unit-norm decoder rows kept)
    for name, p in sae.state_dict().items():
        if name == "threshold" and arch != "batchtopk":
            assert not loaded.threshold.any()  # unused by TopK/ReLU, not stored
            continue
        torch.testing.assert_close(loaded.state_dict()[name], p, rtol=2e-7, atol=0)
    torch.testing.assert_close(loaded.W_dec.norm(dim=1), sae.W_dec.norm(dim=1), rtol=1e-6, atol=0)
    x = torch.randn(20, 8)
    torch.testing.assert_close(loaded.encode(x), sae.encode(x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(loaded(x), sae(x), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("arch", registered_architectures())
def test_files_of_the_old_scaled_format_still_load_bit_for_bit(tmp_path, arch):
    """Before the SAELens format: tensors in the scaled space, our architecture name, no marker."""
    from safetensors.torch import save_file

    sae = build_sae(SAEConfig(arch=arch, d_in=8, d_sae=32, k=2, activation_scale=2.5, seed=4))
    with torch.no_grad():
        sae.b_dec.normal_()
        sae.threshold.fill_(0.3)
    out = tmp_path / "old"
    out.mkdir()
    cfg = {**sae.cfg.to_dict(), "architecture": arch, "dtype": "float32"}
    (out / "cfg.json").write_text(json.dumps(cfg))
    names = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
    save_file({n: getattr(sae, n).detach().contiguous() for n in names}, str(out / "sae_weights.safetensors"))
    (out / "card.json").write_text(
        json.dumps({"weights_sha256": sha256_file(out / "sae_weights.safetensors")})
    )
    loaded, _ = load_sae(out)
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
