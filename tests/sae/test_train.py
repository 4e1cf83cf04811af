"""Training: planted dictionary recovery, unit-norm decoder, aux-k revival, callbacks, schedule."""

from __future__ import annotations

import pytest
import torch

from medseglens_core.sae.base import SAEConfig, build_sae
from medseglens_core.sae.errors import InvalidSAEConfig
from medseglens_core.sae.train import geometric_median, lr_factor, train_sae


def _cfg(**kw) -> SAEConfig:
    base = dict(
        arch="batchtopk",
        d_in=32,
        d_sae=64,
        k=3,
        batch_size=256,
        lr=3e-3,
        warmup=20,
        liveness_window=5000,
        aux_k=16,
    )
    return SAEConfig(**{**base, **kw})


def test_batchtopk_recovers_planted_dictionary(planted_shards):
    shards, dic = planted_shards
    sae, metrics = train_sae(_cfg(), shards, steps=400, buffer_tokens=16384)
    cos = (dic @ sae.W_dec.detach().t()).max(dim=1).values
    assert float((cos >= 0.9).float().mean()) >= 0.9
    assert metrics["explained_variance"] > 0.85
    assert metrics["l0"] == pytest.approx(3.0, abs=0.5)
    norms = sae.W_dec.detach().norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    # the inference threshold was learnt and sits inside the range of planted magnitudes
    assert 0.0 < float(sae.threshold[0]) < 1.5 and bool((sae.threshold == sae.threshold[0]).all())


def _crippled(cfg: SAEConfig):
    """Half the latents start as weak copies of the other half: they lose every top-k contest."""
    sae = build_sae(cfg)
    with torch.no_grad():
        half = cfg.d_sae // 2
        sae.W_enc[:, half:] = 0.3 * sae.W_enc[:, :half]
        sae.W_dec[half:] = sae.W_dec[:half]
    cfg.activation_scale = 1.0
    return sae


def test_aux_k_revives_dead_latents(planted_shards):
    shards, _ = planted_shards
    dead = {}
    for aux_coeff in (0.0, 1.0 / 32):
        cfg = _cfg(arch="topk", aux_coeff=aux_coeff, aux_k=3, b_dec_init="zeros", liveness_window=2048)
        _, m = train_sae(cfg, shards, steps=600, buffer_tokens=16384, sae=_crippled(cfg))
        dead[aux_coeff] = m["train_dead_fraction"]
    assert dead[0.0] >= 0.45  # without aux-k the weak copies never win a top-k contest
    assert dead[1.0 / 32] <= dead[0.0] - 0.1


def test_callbacks_progress_and_should_stop(planted_shards):
    shards, _ = planted_shards
    seen = []
    sae, m = train_sae(
        _cfg(),
        shards,
        steps=100,
        progress=seen.append,
        progress_every=5,
        should_stop=lambda: len(seen) >= 3,
    )
    assert m["stopped"] is True and m["train_steps"] == 11
    assert [s["step"] for s in seen] == [0, 5, 10]
    assert {"loss", "explained_variance", "l0", "dead_fraction", "lr", "tokens"} <= set(seen[0])


def test_lr_schedule_warmup_then_cosine_to_floor():
    cfg = _cfg(warmup=10, lr=1.0, min_lr_frac=0.1)
    assert lr_factor(0, 110, cfg) == pytest.approx(0.1)
    assert lr_factor(9, 110, cfg) == pytest.approx(1.0)
    assert lr_factor(60, 110, cfg) == pytest.approx(0.55)
    assert lr_factor(110, 110, cfg) == pytest.approx(0.1)
    assert lr_factor(60, 110, _cfg(warmup=10, decay="linear", min_lr_frac=0.0)) == pytest.approx(0.5)


def test_geometric_median_resists_outliers():
    x = torch.zeros(101, 2)
    x[:51] = torch.tensor([1.0, 1.0])
    x[51:] = torch.tensor([1.0, 1.0]) + torch.randn(50, 2) * 0.01
    x[-5:] = 1000.0
    torch.testing.assert_close(geometric_median(x), torch.tensor([1.0, 1.0]), atol=0.05, rtol=0)


def test_zero_steps_refused(planted_shards):
    shards, _ = planted_shards
    with pytest.raises(InvalidSAEConfig):
        train_sae(_cfg(), shards, token_budget=10)
