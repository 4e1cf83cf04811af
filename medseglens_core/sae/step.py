"""The fast SAE training step: sparse decode, hand-written backward, no dense input gradient.

For a batch ``x (B, d)`` of SCALED tokens, with ``m = d_sae`` and selected codes ``S`` (``nnz``
entries, about ``k*B``):

    x_c  = x - b_dec                         pre = x_c @ W_enc + b_enc       (the one dense GEMM)
    z    = select(relu(pre))  (sparse)       x_hat = z @ W_dec + b_dec        (CSR @ dense, nnz*d)
    L    = mean_b ||x_hat - x||^2 [+ l1 * mean_b sum_j z_j ||W_dec_j||] [+ aux]

Gradients, with ``g = dL/dx_hat = 2 (x_hat - x) / B``:

    dL/dz_S      = (g @ W_dec^T)_S           sampled dense-dense product (SDDMM) on S only
    dL/dpre_S    = dL/dz_S * [z_S > 0]
    dL/dW_dec    = z^T @ g                   transposed-CSR @ dense
    dL/dW_enc    = x_c^T @ dL/dpre           = (dpre^T @ x_c)^T, transposed-CSR @ dense
    dL/db_enc    = column sums of dL/dpre    bincount over S
    dL/db_dec    = sum_b g - W_enc @ (column sums of dL/dpre)   one matrix-vector product

so the dense gradient through the encoder input that autograd would compute only to obtain
``b_dec``'s gradient is never formed, and no ``B x m`` dense gradient is materialised.
The aux-k term (dead latents reconstructing the detached residual ``x - x_hat``) follows the
same pattern on its own sparse set. Results equal the autograd reference in
:mod:`medseglens_core.sae.reference` up to float rounding (tested).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from medseglens_core.sae.base import SAE, SparseCodes

__all__ = ["StepStats", "batch_topk_select", "fast_step"]


@dataclass(frozen=True)
class StepStats:
    """Per-step training statistics (python floats) and the fired-latent mask.

    ``loss`` is the total; ``mse`` is ``mean_b ||x_hat - x||^2`` in the scaled space;
    ``explained_variance`` is ``1 - sum||x_hat - x||^2 / sum||x - mean(x)||^2`` over the batch;
    ``l0`` the mean number of active latents per token; ``fired`` a ``(d_sae,)`` bool tensor.
    """

    loss: float
    mse: float
    aux: float
    explained_variance: float
    l0: float
    fired: torch.Tensor


def _csr(rows: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """CSR from (row, col)-sorted coordinates."""
    counts = torch.bincount(rows, minlength=shape[0])
    crow = torch.zeros(shape[0] + 1, dtype=torch.int64, device=rows.device)
    crow[1:] = counts.cumsum(0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        return torch.sparse_csr_tensor(crow, cols, vals, shape, check_invariants=False)


class _Pattern:
    """A sparse (B, m) pattern with its CSR and the permutation to its transpose's CSR."""

    def __init__(self, codes: SparseCodes, m: int) -> None:
        self.codes = codes
        self.m = m
        self.z = _csr(codes.rows, codes.cols, codes.vals, (codes.n_rows, m))
        self.perm = torch.argsort(codes.cols, stable=True)
        self._t_rows = codes.cols[self.perm]
        self._t_cols = codes.rows[self.perm]

    def transposed(self, vals: torch.Tensor) -> torch.Tensor:
        """CSR ``(m, B)`` of the transpose, carrying ``vals`` (given in the pattern's order)."""
        return _csr(self._t_rows, self._t_cols, vals[self.perm], (self.m, self.codes.n_rows))

    def sddmm(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Values of ``a @ b`` at the pattern's positions, in the pattern's order."""
        return torch.sparse.sampled_addmm(self.z, a, b, beta=0.0).values()


def batch_topk_select(pre: torch.Tensor, n: int, hint: float | None) -> tuple[SparseCodes, float]:
    """Top ``n`` positive entries of ``pre (B, m)`` over the whole batch, without a full sort.

    A lower bound ``hint`` on the n-th value (last step's n-th value with a 10% margin, or a
    strided-sample quantile on the first call) prefilters candidates with one compare; an
    unsorted ``topk`` then runs on the few candidates only. Exact: if the hint lets fewer than
    ``n`` candidates through, it falls back to all positive entries. Returns the codes sorted by
    (row, col) and the next hint.
    """
    b, m = pre.shape
    flat = pre.reshape(-1)
    n = min(n, flat.numel())
    if hint is None:
        stride = max(1, flat.numel() // 65536)
        sample = flat[::stride]
        keep = min(sample.numel(), max(1, int(2 * n * sample.numel() / flat.numel())))
        hint = float(sample.topk(keep, sorted=False).values.min())
    hint = max(hint, 0.0)
    cand = (flat > hint).nonzero().squeeze(1)
    if cand.numel() < n and hint > 0.0:
        cand = (flat > 0.0).nonzero().squeeze(1)
    vals = flat[cand]
    if cand.numel() > n:
        top = vals.topk(n, sorted=False)
        cand, vals = cand[top.indices], top.values
    next_hint = 0.9 * float(vals.min()) if vals.numel() else 0.0
    cand, order = cand.sort()
    codes = SparseCodes(rows=cand // m, cols=cand % m, vals=vals[order], n_rows=b)
    return codes, next_hint


def _sparse_grads(
    sae: SAE, pat: _Pattern, g: torch.Tensor, x_c: torch.Tensor, l1: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (W_enc^T (m,d), W_dec (m,d), b_enc (m,), dpre colsum (m,)) of one sparse term."""
    codes = pat.codes
    dz = pat.sddmm(g, sae.W_dec.t())
    if l1:
        dz = dz + l1 * sae.W_dec.norm(dim=1)[codes.cols]
    dpre = dz * (codes.vals > 0)
    g_wdec = pat.transposed(codes.vals) @ g
    g_wenc_t = pat.transposed(dpre) @ x_c
    col_sum = torch.bincount(codes.cols, weights=dpre, minlength=pat.m).to(dpre.dtype)
    return g_wenc_t, g_wdec, col_sum, dpre


def _aux_codes(pre: torch.Tensor, dead: torch.Tensor, aux_k: int) -> SparseCodes | None:
    """Top ``aux_k`` dead latents per token on ``relu(pre)``; ``None`` when nothing is dead."""
    dead_idx = dead.nonzero().squeeze(1)
    ka = min(aux_k, dead_idx.numel())
    if ka == 0:
        return None
    b = pre.shape[0]
    top = pre.index_select(1, dead_idx).topk(ka, dim=1, sorted=False)
    cols = dead_idx[top.indices]
    cols, order = cols.sort(dim=1)
    vals = top.values.gather(1, order).clamp_min(0.0)
    rows = torch.arange(b, device=pre.device).repeat_interleave(ka)
    return SparseCodes(rows=rows, cols=cols.reshape(-1), vals=vals.reshape(-1), n_rows=b)


@torch.no_grad()
def fast_step(sae: SAE, x: torch.Tensor, dead: torch.Tensor | None = None) -> StepStats:
    """One training step's loss and gradients on scaled tokens ``x (B, d_in)``.

    Sets ``.grad`` of ``W_enc, W_dec, b_enc, b_dec`` (replacing any previous value); does not
    project or step. ``dead`` is a ``(d_sae,)`` bool mask of dead latents for the aux-k loss.
    """
    cfg = sae.cfg
    b, m = x.shape[0], cfg.d_sae
    x_c = x - sae.b_dec
    pre = torch.addmm(sae.b_enc, x_c, sae.W_enc)
    codes = sae.select(pre)
    sae.observe_codes(codes.vals)
    pat = _Pattern(codes, m)
    x_hat = torch.addmm(sae.b_dec, pat.z, sae.W_dec)
    err = x_hat - x
    mse = err.pow(2).sum() / b
    l1 = cfg.l1_coeff / b if sae.uses_l1 else 0.0
    g_wenc_t, g_wdec, col_sum, _ = _sparse_grads(sae, pat, err * (2.0 / b), x_c, l1)
    loss = mse
    if l1:
        dec_norm = sae.W_dec.norm(dim=1)
        loss = loss + l1 * (codes.vals * dec_norm[codes.cols]).sum()
        vsum = torch.bincount(codes.cols, weights=codes.vals, minlength=m).to(x.dtype)
        g_wdec += (l1 * vsum / dec_norm).unsqueeze(1) * sae.W_dec
    grad_b_dec = err.sum(0) * (2.0 / b)
    aux = torch.zeros((), device=x.device)
    aux_codes = _aux_codes(pre, dead, cfg.aux_k) if (sae.uses_aux and dead is not None) else None
    if aux_codes is not None and cfg.aux_coeff > 0:
        apat = _Pattern(aux_codes, m)
        aerr = apat.z @ sae.W_dec + err  # x_aux - (x - x_hat)
        aux = cfg.aux_coeff * aerr.pow(2).sum() / b
        a_wenc_t, a_wdec, a_col, _ = _sparse_grads(sae, apat, aerr * (2.0 * cfg.aux_coeff / b), x_c, 0.0)
        g_wenc_t, g_wdec, col_sum = g_wenc_t + a_wenc_t, g_wdec + a_wdec, col_sum + a_col
        loss = loss + aux
    grad_b_dec -= sae.W_enc @ col_sum
    sae.W_enc.grad = g_wenc_t.t().contiguous()
    sae.W_dec.grad = g_wdec
    sae.b_enc.grad = col_sum
    sae.b_dec.grad = grad_b_dec
    total_var = (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
    fired = torch.zeros(m, dtype=torch.bool, device=x.device)
    fired[codes.cols[codes.vals > 0]] = True
    return StepStats(
        loss=float(loss),
        mse=float(mse),
        aux=float(aux),
        explained_variance=float(1.0 - err.pow(2).sum() / total_var),
        l0=float((codes.vals > 0).sum()) / b,
        fired=fired,
    )
