"""Chunked selection: the fused encoder + selection equals the one-shot selection and the reference."""

from __future__ import annotations

import copy

import pytest
import torch

from medseglens_core.sae import step
from medseglens_core.sae.base import SAEConfig, build_sae, registered_architectures
from medseglens_core.sae.reference import reference_step
from medseglens_core.sae.select import candidates_above, kth_smallest, top_n_in_order


def test_top_n_in_order_keeps_order_and_breaks_ties_by_position():
    vals = torch.tensor([0.5, 2.0, 1.0, 3.0, 1.0, 1.0, 0.1])
    idx = torch.arange(7) * 10
    i, v = top_n_in_order(idx, vals, 4)
    assert i.tolist() == [10, 20, 30, 40]  # 3.0, 2.0 and the first two of the three tied 1.0s
    assert v.tolist() == [2.0, 1.0, 3.0, 1.0]
    i, v = top_n_in_order(idx, vals, 9)
    assert torch.equal(i, idx)


@pytest.mark.parametrize("arch", registered_architectures())
@pytest.mark.parametrize("hint", [None, 0.0, 0.3, 50.0])
def test_chunked_encode_select_equals_one_shot(monkeypatch, arch, hint):
    sae = build_sae(SAEConfig(arch=arch, d_in=16, d_sae=40, k=3, seed=1))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
    x_c = torch.randn(50, 16)
    pre = torch.addmm(sae.b_enc, x_c, sae.W_enc).detach()
    one = copy.deepcopy(sae)
    one._select_hint = hint
    expect = one.select(pre)
    monkeypatch.setattr(step, "CHUNK_ROWS", 7)  # 8 chunks, the last one short
    sae._select_hint = hint
    dead = torch.tensor([3, 17, 39])
    codes, pre_dead = step.encode_select(sae, x_c, dead)
    assert torch.equal(codes.rows, expect.rows) and torch.equal(codes.cols, expect.cols)
    torch.testing.assert_close(codes.vals, expect.vals)
    torch.testing.assert_close(pre_dead, pre[:, dead])
    if arch == "batchtopk":
        assert codes.vals.numel() == 50 * 3
        assert sae._select_hint == pytest.approx(0.9 * float(codes.vals.min()))


@pytest.mark.parametrize("arch", registered_architectures())
def test_multi_chunk_step_matches_reference(monkeypatch, arch):
    monkeypatch.setattr(step, "CHUNK_ROWS", 5)
    sae = build_sae(SAEConfig(arch=arch, d_in=16, d_sae=64, k=4, aux_k=8, l1_coeff=0.1, seed=3))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.5)
        sae.b_dec.normal_(0, 0.5)
    sae._select_hint = 100.0  # far too high: BatchTopK must rescan and still be exact
    ref = copy.deepcopy(sae)
    x = 2.0 * torch.randn(48, 16)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[1::4] = True
    fast, slow = step.fast_step(sae, x, dead), reference_step(ref, x, dead)
    assert fast.loss == pytest.approx(slow.loss, rel=1e-5)
    assert fast.explained_variance == pytest.approx(slow.explained_variance, rel=1e-5)
    assert fast.l0 == slow.l0 and torch.equal(fast.fired, slow.fired)
    for name, p in sae.named_parameters():
        q = dict(ref.named_parameters())[name]
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5 * float(q.grad.abs().max()))


@pytest.mark.parametrize("arch", ["batchtopk", "topk"])
@pytest.mark.parametrize("sparse_below", [0, 10**9])  # 0: always sparse aux; 1e9: always dense
@pytest.mark.parametrize("dead_bias", [0.0, -2.0, -100.0])  # -2: most rows need no aux top-k
def test_aux_k_dense_and_sparse_paths_match_reference(monkeypatch, arch, sparse_below, dead_bias):
    monkeypatch.setattr(step, "AUX_SPARSE_BELOW", sparse_below)
    sae = build_sae(SAEConfig(arch=arch, d_in=16, d_sae=64, k=4, aux_k=6, seed=5))
    dead = torch.zeros(64, dtype=torch.bool)
    dead[::2] = True
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.5)
        sae.b_enc[dead] += dead_bias
        sae.b_dec.normal_(0, 0.5)
    ref = copy.deepcopy(sae)
    x = 2.0 * torch.randn(40, 16)
    fast, slow = step.fast_step(sae, x, dead), reference_step(ref, x, dead)
    assert fast.loss == pytest.approx(slow.loss, rel=1e-5)
    assert fast.aux == pytest.approx(slow.aux, rel=1e-5) and fast.aux > 0
    for name, p in sae.named_parameters():
        q = dict(ref.named_parameters())[name]
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5 * float(q.grad.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_candidates_above_equals_torch_nonzero(dtype):
    # NumPy scan on CPU (bfloat16 falls back to torch): the indices torch's compare gives,
    # with a threshold that is not representable in the dtype and values equal to it.
    pre = torch.randn(37, 53).to(dtype)
    pre[3, :5] = torch.tensor(0.7, dtype=dtype)
    for thr in (0.7, 0.1 + 0.2, 0.0, -1.5, 40.0):
        idx, vals = candidates_above(pre, thr)
        expect = (pre.reshape(-1) > thr).nonzero().squeeze(1)
        assert idx.dtype == torch.int64 and torch.equal(idx, expect)
        assert torch.equal(vals, pre.reshape(-1)[expect])


def test_kth_smallest_equals_kthvalue_with_ties():
    vals = torch.tensor([3.0, 1.0, 2.0, 2.0, 5.0, 2.0, 0.5])
    for k in range(1, 8):
        assert float(kth_smallest(vals, k)) == float(vals.kthvalue(k).values)
    big = torch.randn(10_001, dtype=torch.float64)
    assert float(kth_smallest(big, 5_000)) == float(big.kthvalue(5_000).values)
    assert kth_smallest(big, 1).dtype == torch.float64


def test_keep_top_per_row_equals_topk_and_breaks_ties_as_topk():
    z = torch.rand(64, 40)
    z[5, 10:20] = 0.5  # ten-way tie straddling the 8th largest of row 5
    z[5, :10] = 0.9
    z[6] = 0.25  # a constant row: all tied
    z[7, ::3] = 0.0
    ka = 12
    top = z.topk(ka, dim=1, sorted=False)
    expect = torch.zeros_like(z).scatter_(1, top.indices, top.values)
    got = step._keep_top_per_row_(z.clone(), ka)
    assert torch.equal(got, expect)
    assert ((got > 0).sum(1) == ka).all()
    # a non-contiguous input takes the topk path with the same result
    strided = z.t().contiguous().t()
    assert not strided.is_contiguous()
    assert torch.equal(step._keep_top_per_row_(strided, ka), expect)


def test_pattern_products_equal_dense_products_with_empty_rows_and_columns():
    from medseglens_core.sae.base import SparseCodes

    b, m, d = 7, 11, 5
    dense = torch.zeros(b, m)
    dense[0, [1, 4]] = torch.tensor([0.5, 2.0])
    dense[2, [0, 4, 10]] = torch.tensor([1.5, -0.25, 3.0])  # rows 1, 3.. empty; columns 2, 3.. empty
    dense[6, 10] = 0.75
    rows, cols = dense.nonzero(as_tuple=True)
    pat = step._Pattern(SparseCodes(rows=rows, cols=cols, vals=dense[rows, cols], n_rows=b), m)
    right, left = torch.randn(m, d), torch.randn(b, d)
    torch.testing.assert_close(pat.times(right), dense @ right)
    other = torch.randn(rows.numel())
    dense_other = torch.zeros(b, m).index_put_((rows, cols), other)
    torch.testing.assert_close(pat.t_times(other, left), dense_other.t() @ left)
