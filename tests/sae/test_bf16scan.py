"""The bf16 filter of the training step: exactly the entries above the threshold, fp32 values."""

from __future__ import annotations

import copy

import pytest
import torch

from medseglens_core.sae import bf16scan, step
from medseglens_core.sae.base import SAEConfig, build_sae
from medseglens_core.sae.reference import reference_step


def _operands(seed: int, b: int = 1000, d: int = 40, m: int = 96):
    gen = torch.Generator().manual_seed(seed)
    x = 3.0 * torch.randn(b, d, generator=gen)
    w = torch.randn(d, m, generator=gen) / d**0.5
    bias = 0.5 * torch.randn(m, generator=gen)
    return x, w, bias


def test_filter_keeps_exactly_the_entries_whose_fp32_value_is_above_the_threshold(monkeypatch):
    monkeypatch.setattr(bf16scan, "CHUNK_ROWS", 300)  # 4 chunks, the last one short
    missed_by_plain_bf16 = 0
    for seed in (0, 1, 2):
        x, w, bias = _operands(seed)
        pre = torch.addmm(bias, x, w)
        every = torch.arange(pre.numel())
        exact = bf16scan._recompute(x, w, bias, every)
        for q in (0.75, 0.95):
            thr = float(pre.quantile(q))
            idx, vals = bf16scan.above_threshold(x, w, bias, thr, {})
            assert torch.equal(idx, (exact > thr).nonzero().squeeze(1))  # all of them, in order
            assert torch.equal(vals, exact[idx])
            # the same set as the float32 GEMM's, up to float32 rounding at the threshold
            differ = (exact > thr) != (pre.view(-1) > thr)
            assert bool(((pre.view(-1)[differ] - thr).abs() < 1e-5).all())
            torch.testing.assert_close(vals, pre.view(-1)[idx], rtol=1e-6, atol=1e-5)
            naive = (torch.addmm(bias.bfloat16(), x.bfloat16(), w.bfloat16()).float() > thr).view(-1)
            missed_by_plain_bf16 += int(((exact > thr) & ~naive).sum())
    assert missed_by_plain_bf16 > 0  # the cases are hard ones: without the bound entries are lost


def test_recomputed_values_do_not_depend_on_the_other_entries_or_the_threads():
    x, w, bias = _operands(3)
    every = torch.arange(x.shape[0] * w.shape[1])
    some = every[every % 7 == 3]
    full = bf16scan._recompute(x, w, bias, every)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = bf16scan._recompute(x, w, bias, some)
        torch.set_num_threads(2)
        two = bf16scan._recompute(x, w, bias, some)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one, full[some]) and torch.equal(two, one)


def test_a_threshold_the_bound_cannot_keep_positive_falls_back():
    x, w, bias = _operands(4)
    assert bf16scan.above_threshold(x, w, bias, 1e-4, {}) is None


@pytest.mark.parametrize("with_dead", [False, True])
def test_step_with_and_without_the_filter_gives_the_same_codes_and_matches_the_reference(
    monkeypatch, with_dead
):
    cfg = SAEConfig(d_in=16, d_sae=64, k=4, aux_k=8, seed=3)
    results = {}
    real = bf16scan.above_threshold
    for native in (False, True):
        monkeypatch.setattr(bf16scan, "NATIVE_BF16", native)
        calls = []
        monkeypatch.setattr(
            bf16scan, "above_threshold", lambda *a, _c=calls, **k: _c.append(1) or real(*a, **k)
        )
        torch.manual_seed(0)
        sae = build_sae(cfg)
        with torch.no_grad():
            sae.b_enc.normal_(0, 0.5)
            sae.b_dec.normal_(0, 0.5)
        x = 2.0 * torch.randn(48, 16, generator=torch.Generator().manual_seed(9))
        dead = torch.zeros(64, dtype=torch.bool)
        if with_dead:
            dead[::8] = True  # 8 of 64: below BF16_DEAD_BELOW, so the filter still runs
        step.fast_step(sae, x, dead)  # the first step sets the candidate threshold
        ref = copy.deepcopy(sae)
        x_c = x - sae.b_dec
        codes, pre_dead = step.encode_select(copy.deepcopy(sae), x_c.detach(), dead.nonzero().squeeze(1))
        fast, slow = step.fast_step(sae, x, dead), reference_step(ref, x, dead)
        assert bool(calls) == native
        assert fast.loss == pytest.approx(slow.loss, rel=1e-5) and fast.l0 == slow.l0
        for name, p in sae.named_parameters():
            q = dict(ref.named_parameters())[name]
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5 * float(q.grad.abs().max()))
        results[native] = codes, pre_dead
    (a, pa), (b, pb) = results[False], results[True]
    assert torch.equal(a.rows, b.rows) and torch.equal(a.cols, b.cols)
    torch.testing.assert_close(a.vals, b.vals)
    if with_dead:
        torch.testing.assert_close(pa, pb)
