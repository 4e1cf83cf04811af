"""Reconstruction metrics against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from medseglens_core.sae.base import SAEConfig, build_sae
from medseglens_core.sae.metrics import reconstruction_metrics


def test_identity_topk1_sae_metrics_by_hand():
    # d_in = d_sae = 2, identity weights, k = 1: each token keeps its larger positive coordinate.
    sae = build_sae(SAEConfig(arch="topk", d_in=2, d_sae=2, k=1, activation_scale=1.0, b_dec_init="zeros"))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(2))
        sae.W_dec.copy_(torch.eye(2))
    x = torch.tensor([[3.0, 1.0], [0.0, 2.0], [-1.0, 0.0], [1.0, 0.5]])
    # x_hat = [3,0], [0,2], [0,0], [1,0]; latent 0 fires on 2/4 tokens, latent 1 on 1/4
    m = reconstruction_metrics(sae, [x], dense_threshold=0.4)
    err = 1 + 0 + 1 + 0.25
    mean = x.mean(0)
    total_var = float((x - mean).pow(2).sum())
    assert m["n_tokens"] == 4
    assert m["mse"] == pytest.approx(err / 8)
    assert m["normalized_mse"] == pytest.approx(err / float(x.pow(2).sum()))
    assert m["explained_variance"] == pytest.approx(1 - err / total_var)
    assert m["l0"] == pytest.approx(3 / 4)
    assert m["dead_fraction"] == 0.0
    assert m["dense_fraction"] == 0.5
    half = reconstruction_metrics(sae, [x], max_tokens=2)
    assert half["n_tokens"] == 2 and half["mse"] == pytest.approx(1 / 4)
