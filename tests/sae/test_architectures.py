"""SAE variants: registry, config validation, batch-independent inference, fast step == reference."""

from __future__ import annotations

import copy

import pytest
import torch

from medseglens_core.sae.base import SAE, SAEConfig, build_sae, register_sae, registered_architectures
from medseglens_core.sae.errors import DuplicateSAEArchitecture, InvalidSAEConfig, UnknownSAEArchitecture
from medseglens_core.sae.reference import reference_step
from medseglens_core.sae.step import batch_topk_select, fast_step

ARCHS = registered_architectures()


def test_registry_lists_the_three_variants_and_refuses_duplicates():
    assert ARCHS == ("batchtopk", "relu", "topk")

    class Impostor(SAE):
        arch = "topk"

    with pytest.raises(DuplicateSAEArchitecture):
        register_sae(Impostor)
    with pytest.raises(UnknownSAEArchitecture):
        build_sae(SAEConfig(arch="gated"))


@pytest.mark.parametrize("bad", [{"k": 0}, {"k": 100, "d_sae": 64}, {"decay": "step"}, {"lr": -1.0}])
def test_config_validation(bad):
    with pytest.raises(InvalidSAEConfig):
        SAEConfig(**{"d_in": 16, "d_sae": 64, **bad}).validate()
    with pytest.raises(InvalidSAEConfig):
        SAEConfig.from_dict({"d_in": 16, "nonsense": 1})


def _perturbed(arch: str) -> SAE:
    sae = build_sae(SAEConfig(arch=arch, d_in=16, d_sae=64, k=4, aux_k=8, l1_coeff=0.1, seed=3))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.5)
        sae.b_dec.normal_(0, 0.5)
        sae.W_enc.add_(0.1 * torch.randn_like(sae.W_enc))
    return sae


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("with_dead", [False, True])
def test_fast_step_matches_autograd_reference(arch, with_dead):
    sae = _perturbed(arch)
    ref = copy.deepcopy(sae)
    x = 2.0 * torch.randn(48, 16)
    dead = torch.zeros(64, dtype=torch.bool)
    if with_dead:
        dead[::3] = True
    fast, slow = fast_step(sae, x, dead), reference_step(ref, x, dead)
    assert fast.loss == pytest.approx(slow.loss, rel=1e-5)
    assert fast.l0 == slow.l0
    if with_dead and sae.uses_aux:
        assert fast.aux > 0 and fast.aux == pytest.approx(slow.aux, rel=1e-5)
    for name, p in sae.named_parameters():
        q = dict(ref.named_parameters())[name]
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5 * float(q.grad.abs().max()))
    torch.testing.assert_close(sae.threshold, ref.threshold)


def test_batch_topk_select_is_exact_with_any_hint():
    pre = torch.randn(64, 100)
    exact = torch.relu(pre).flatten().topk(64 * 5).indices.sort().values
    for hint in (None, 0.0, 0.5, 5.0, 100.0):
        codes, nxt = batch_topk_select(pre, 64 * 5, hint)
        assert torch.equal(codes.rows * 100 + codes.cols, exact)
        assert 0 < nxt < float(codes.vals.min())


@pytest.mark.parametrize("arch", ARCHS)
def test_inference_codes_are_batch_independent(arch):
    sae = _perturbed(arch)
    sae.threshold.fill_(0.3)
    x = torch.randn(257, 16)
    z_all = sae.encode(x)
    assert (z_all > 0).any()
    for i in (0, 17, 256):
        assert torch.equal(sae.encode(x[i : i + 1]), z_all[i : i + 1])
    assert torch.equal(sae.encode(x[100:131]), z_all[100:131])
    assert torch.equal(sae.encode(x.flip(0)).flip(0), z_all)


def test_batchtopk_inference_is_jumprelu_on_threshold():
    sae = _perturbed("batchtopk")
    sae.threshold.fill_(0.25)
    x = torch.randn(40, 16)
    pre = sae.pre_acts(x)
    z = sae.encode(x)
    assert torch.equal(z, torch.where(pre > 0.25, pre, torch.zeros_like(pre)))


def test_decode_undoes_the_activation_scale():
    sae = _perturbed("topk")
    z = torch.relu(torch.randn(5, 64))
    base = sae.decode(z)
    sae.cfg.activation_scale = 4.0
    torch.testing.assert_close(sae.decode(z), base / 4.0)
