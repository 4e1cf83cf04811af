"""The fast SAE training step: sparse decode, hand-written backward, no dense input gradient.

For a batch ``x (B, d)`` of SCALED tokens, with ``m = d_sae`` and selected codes ``S`` (``nnz``
entries, about ``k*B``):

    x_c  = x - b_dec                         pre = x_c @ W_enc + b_enc       (the one dense GEMM)
    z    = select(relu(pre))  (sparse)       x_hat = z @ W_dec + b_dec        (embedding bag, nnz*d)

``pre`` is computed and selected from one row chunk at a time (:func:`encode_select`): each
chunk goes into a small buffer reused across chunks and steps and its candidate codes are
collected while it is in cache, so the ``B x d_sae`` matrix is never materialised (no
page-faulted fresh buffer, no second pass over it through memory). Only the dead latents'
columns are kept, for the aux-k term.
    L    = mean_b ||x_hat - x||^2 [+ l1 * mean_b sum_j z_j ||W_dec_j||] [+ aux]

On a CPU with native bf16 and a candidate rule that is a positive threshold (BatchTopK after
its first step), with fewer than ``BF16_DEAD_BELOW`` of the latents dead, a bf16 GEMM with a
proven error bound filters the entries instead and only the candidates' values are computed in
float32 (:mod:`~medseglens_core.sae.bf16scan`): the same codes, about a third of the GEMM's
time saved.

Gradients, with ``g = dL/dx_hat = 2 (x_hat - x) / B``:

    dL/dz_S      = (g @ W_dec^T)_S           sampled dense-dense product (SDDMM) on S only
    dL/dpre_S    = dL/dz_S * [z_S > 0]
    dL/dW_dec    = z^T @ g                   embedding bag over the transpose's rows
    dL/dW_enc    = x_c^T @ dL/dpre           = (dpre^T @ x_c)^T, the same
    dL/db_enc    = column sums of dL/dpre    bincount over S
    dL/db_dec    = sum_b g - W_enc @ (column sums of dL/dpre)   one matrix-vector product

so the dense gradient through the encoder input that autograd would compute only to obtain
``b_dec``'s gradient is never formed, and no ``B x m`` dense gradient is materialised.
The three sparse @ dense products are ``F.embedding_bag(mode="sum", per_sample_weights=...)``
(one weighted bag per row of ``z`` or of its transpose), 2-5x faster on CPU than MKL's CSR @ dense
and with a different summation order (the results agree to float rounding).
The aux-k term (dead latents reconstructing the detached residual ``x - x_hat``) reuses the
dead latents' pre-activations kept by the encoder pass; only rows with more than ``aux_k``
positive dead pre-activations select their ``aux_k`` largest (one row sort gives each row's
``aux_k``-th value; the entries ``topk`` keeps). Its codes fill about ``aux_k / n_dead`` of the
``(B, n_dead)`` matrix, usually far more than the main codes fill theirs, so it runs as four
dense GEMMs over the dead latents (``z_aux @ W_dec[dead]``, the same transposed products as
above and ``g @ W_dec[dead]^T`` masked to the support), and falls back to the sparse products
only below ``1/AUX_SPARSE_BELOW`` fill. Results equal the autograd reference in
:mod:`medseglens_core.sae.reference` up to float rounding (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from medseglens_core.sae import bf16scan
from medseglens_core.sae.base import SAE, SparseCodes
from medseglens_core.sae.select import batch_topk_select, candidates_above, codes_from_flat, csr, numpy_view

__all__ = ["StepStats", "batch_topk_select", "encode_select", "fast_step"]

# Rows of pre-activations computed per chunk on CPU: large enough for an efficient GEMM, small
# enough that a chunk (256 x 2048 float32 = 2 MiB) is still in cache when it is filtered.
CHUNK_ROWS = 256
# The aux-k term runs as dense GEMMs over the dead latents unless its codes fill less than
# 1/AUX_SPARSE_BELOW of the (B, n_dead) matrix: measured on CPU (benchmarks/sae_step.py), the
# sparse path ties the dense one at 25% fill (50% dead, aux_k 256) and loses at 50% (10% dead).
AUX_SPARSE_BELOW = 16
# The bf16 filter (bf16scan) saves about a third of the float32 encoder GEMM; with it the dead
# latents' pre-activations for aux-k need their own float32 product, which costs their share of
# the GEMM: so the filter is used only while fewer than this share of the latents are dead.
BF16_DEAD_BELOW = 0.25


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


class _Pattern:
    """A sparse (B, m) pattern with its CSR and the permutation to its transpose's CSR."""

    def __init__(self, codes: SparseCodes, m: int) -> None:
        self.codes = codes
        self.m = m
        b = codes.n_rows
        # int32 indices: what MKL's sparse BLAS takes, so no per-product index conversion.
        idx_t = torch.int32 if max(b, m) < 2**31 else torch.int64
        self.z = csr(torch.bincount(codes.rows, minlength=b), codes.cols.to(idx_t), codes.vals, (b, m))
        # Stable sort on the narrowest integer type that holds the column ids (int16 sorts ~6x
        # faster than int64 on CPU); rows stay increasing within each column.
        key = codes.cols.to(torch.int16 if m <= 2**15 else torch.int32)
        self.perm = key.argsort(stable=True)
        self._t_counts = torch.bincount(codes.cols, minlength=m)
        self._t_cols = codes.rows.index_select(0, self.perm).to(idx_t)
        # bag offsets of the rows and of the transpose's rows, for the embedding-bag products
        self._offsets = self.z.crow_indices()[:-1]
        self._t_offsets = torch.zeros(m, dtype=idx_t, device=codes.cols.device)
        torch.cumsum(self._t_counts[:-1], 0, out=self._t_offsets[1:])

    def times(self, dense: torch.Tensor) -> torch.Tensor:
        """``z @ dense`` (``(B, d)``) with the pattern's own values: a weighted embedding bag per row."""
        cols = self.z.col_indices()
        return F.embedding_bag(cols, dense, self._offsets, mode="sum", per_sample_weights=self.codes.vals)

    def t_times(self, vals: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """``z(vals)^T @ dense`` (``(m, d)``) for values ``vals`` given in the pattern's order."""
        w = vals.index_select(0, self.perm)
        return F.embedding_bag(self._t_cols, dense, self._t_offsets, mode="sum", per_sample_weights=w)

    def sddmm(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Values of ``a @ b`` at the pattern's positions, in the pattern's order."""
        return torch.sparse.sampled_addmm(self.z, a, b, beta=0.0).values()


def _chunk_buffer(sae: SAE, rows: int, like: torch.Tensor) -> torch.Tensor:
    """A ``(rows, d_sae)`` scratch buffer kept on the SAE across steps (reallocated on change)."""
    buf = getattr(sae, "_chunk_buf", None)
    if buf is None or buf.shape[0] < rows or buf.device != like.device or buf.dtype != like.dtype:
        buf = like.new_empty(rows, sae.cfg.d_sae)
        sae._chunk_buf = buf
    return buf[:rows]


@torch.no_grad()
def encode_select(
    sae: SAE, x_c: torch.Tensor, dead_idx: torch.Tensor | None = None
) -> tuple[SparseCodes, torch.Tensor | None]:
    """Training codes of centred scaled tokens ``x_c (B, d_in)``, fused with the encoder GEMM.

    Computes ``pre = x_c @ W_enc + b_enc`` one row chunk at a time (all rows at once off-CPU),
    collects each chunk's candidates with the variant's ``chunk_candidates`` and finishes with
    its ``finish_selection`` (rescanning if it asks to). Returns the codes sorted by (row, col)
    and, when ``dead_idx (n_dead,)`` is given, ``pre[:, dead_idx] (B, n_dead)`` for the aux-k term.
    """
    b, m = x_c.shape[0], sae.cfg.d_sae
    fast = _bf16_codes(sae, x_c, dead_idx)
    if fast is not None:
        return fast
    rows = min(b, CHUNK_ROWS) if x_c.device.type == "cpu" else b
    buf = _chunk_buffer(sae, rows, x_c)
    pre_dead = None if dead_idx is None else x_c.new_empty(b, dead_idx.numel())
    while True:
        idx_parts, val_parts = [], []
        for r0 in range(0, b, rows):
            r1 = min(b, r0 + rows)
            pre = buf[: r1 - r0]
            torch.addmm(sae.b_enc, x_c[r0:r1], sae.W_enc, out=pre)
            idx, vals = sae.chunk_candidates(pre)
            idx_parts.append(idx.add_(r0 * m) if r0 else idx)
            val_parts.append(vals)
            if pre_dead is not None:
                torch.index_select(pre, 1, dead_idx, out=pre_dead[r0:r1])
        done = sae.finish_selection(torch.cat(idx_parts), torch.cat(val_parts), b)
        if done is not None:
            return codes_from_flat(*done, b, m), pre_dead


def _bf16_codes(
    sae: SAE, x_c: torch.Tensor, dead_idx: torch.Tensor | None
) -> tuple[SparseCodes, torch.Tensor | None] | None:
    """:func:`encode_select` through the bf16 filter (:mod:`~medseglens_core.sae.bf16scan`)
    where it applies: a float32 CPU batch on a CPU with native bf16, and a variant whose
    candidates are the entries above a positive threshold. ``None`` where it does not (or the
    variant asks for a rescan): the caller takes the float32 path."""
    thr = sae.candidate_threshold()
    if thr is None or not bf16scan.NATIVE_BF16 or x_c.device.type != "cpu" or x_c.dtype != torch.float32:
        return None
    if dead_idx is not None and dead_idx.numel() > BF16_DEAD_BELOW * sae.cfg.d_sae:
        return None
    bufs = sae.__dict__.setdefault("_bf16_bufs", {})
    found = bf16scan.above_threshold(x_c, sae.W_enc, sae.b_enc, thr, bufs)
    if found is None:
        return None
    done = sae.finish_selection(*found, x_c.shape[0])
    if done is None:
        return None
    pre_dead = None
    if dead_idx is not None:  # float32, over the dead latents' columns only
        pre_dead = torch.addmm(sae.b_enc.index_select(0, dead_idx), x_c, sae.W_enc.index_select(1, dead_idx))
    return codes_from_flat(*done, x_c.shape[0], sae.cfg.d_sae), pre_dead


def _sparse_grads(
    sae: SAE, pat: _Pattern, err: torch.Tensor, scale: float, x_c: torch.Tensor, l1: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients (W_enc^T (m,d), W_dec (m,d), b_enc (m,)) of one sparse term whose gradient
    w.r.t. its reconstruction is ``scale * err``."""
    codes = pat.codes
    dz = pat.sddmm(err, sae.W_dec.t()).mul_(scale)
    if l1:
        dz += l1 * sae.W_dec.norm(dim=1).index_select(0, codes.cols)
    dpre = dz * (codes.vals > 0)
    g_wdec = pat.t_times(codes.vals, err).mul_(scale)
    g_wenc_t = pat.t_times(dpre, x_c)
    col_sum = torch.bincount(codes.cols, weights=dpre, minlength=pat.m).to(dpre.dtype)
    return g_wenc_t, g_wdec, col_sum


def _aux_dense_codes(pre_dead: torch.Tensor, aux_k: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Dense aux codes ``z (B, n_dead)``: ``relu(pre_dead)`` keeping each row's ``aux_k`` largest.

    A row with at most ``aux_k`` positive entries keeps all of them (what the reference's top-k
    over ``relu`` keeps, up to zeros), so only the rows with more positives run a ``topk``.
    Returns ``z``, its support ``z > 0`` as 0/1 floats and its number of nonzeros.
    """
    z = pre_dead.clamp_min(0.0)
    ka = min(aux_k, z.shape[1])
    # Float 0/1 masks and float row sums: vectorised passes (bool reductions cast to int64).
    support = torch.gt(z, 0.0, out=torch.empty_like(z))
    per_row = support.sum(1)
    over = (per_row > ka).nonzero().squeeze(1)
    if over.numel() == z.shape[0]:  # usually every row: no gather/scatter of the rows
        _keep_top_per_row_(z, ka)
        torch.gt(z, 0.0, out=support)
    elif over.numel():
        sub = _keep_top_per_row_(z.index_select(0, over), ka)
        z.index_copy_(0, over, sub)
        support.index_copy_(0, over, torch.gt(sub, 0.0, out=torch.empty_like(sub)))
    return z, support, int(per_row.clamp_max(ka).sum())


def _keep_top_per_row_(z: torch.Tensor, ka: int) -> torch.Tensor:
    """Zero all but each row's ``ka`` largest entries of ``z (r, n)`` in place; returns ``z``.

    The same entries as ``z.topk(ka, dim=1)`` keeps: each row's ``ka``-th largest value comes
    from NumPy's row sort (vectorised on CPU: 1.5x faster than its introselect ``partition``
    and 1.7x faster than ``topk`` on 4096 x 1024, measured), and the entries at or above it are
    kept. Rows with more than ``ka`` such entries (ties at the
    ``ka``-th value) go through ``topk``, so ties are broken exactly as ``topk`` breaks them.
    """
    a = numpy_view(z)
    if a is None or not z.is_contiguous():
        return _topk_rows_(z, torch.arange(z.shape[0], device=z.device), ka)
    n = z.shape[1]
    kth = torch.from_numpy(np.sort(a, axis=1)[:, n - ka : n - ka + 1])
    # A float 0/1 mask: its row sums and the product are vectorised passes (bool ones are not).
    keep = torch.ge(z, kth, out=torch.empty_like(z))
    tied = (keep.sum(1) > ka).nonzero().squeeze(1)
    if tied.numel():
        _topk_rows_(z, tied, ka)
        keep.index_fill_(0, tied, 1.0)
    return z.mul_(keep)  # z >= 0 here: kept entries times 1 are unchanged, the others 0


def _topk_rows_(z: torch.Tensor, rows: torch.Tensor, ka: int) -> torch.Tensor:
    """Zero all but the ``ka`` largest entries of ``z``'s ``rows`` (a topk per row), in place."""
    sub = z.index_select(0, rows)
    top = sub.topk(ka, dim=1, sorted=False)
    return z.index_copy_(0, rows, torch.zeros_like(sub).scatter_(1, top.indices, top.values))


def _aux_term(
    sae: SAE,
    z: torch.Tensor,
    support: torch.Tensor,
    dead_idx: torch.Tensor,
    err: torch.Tensor,
    x_c: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Aux-k loss and its gradients (W_enc^T rows, W_dec rows, b_enc, each over ``dead_idx``)
    from dense aux codes ``z (B, n_dead)`` and their 0/1 ``support``, by dense products on the
    dead latents only."""
    b, coeff = err.shape[0], sae.cfg.aux_coeff
    w = sae.W_dec.index_select(0, dead_idx)  # (n_dead, d)
    aerr = torch.addmm(err, z, w)  # x_aux - (x - x_hat)
    aux = coeff * torch.dot(aerr.view(-1), aerr.view(-1)) / b
    g = aerr.mul_(2.0 * coeff / b)
    dpre = (g @ w.t()).mul_(support)
    return aux, dpre.t() @ x_c, z.t() @ g, dpre.sum(0)


def _aux_sparse(
    sae: SAE,
    z: torch.Tensor,
    dead_idx: torch.Tensor,
    err: torch.Tensor,
    x_c: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_aux_term` on the sparse pattern of ``z`` (full-width gradients, ``(m, d)``, ``(m,)``)."""
    b, coeff = err.shape[0], sae.cfg.aux_coeff
    local = codes_from_flat(*candidates_above(z, 0.0), b, z.shape[1])  # z's support, row-major
    apat = _Pattern(
        SparseCodes(rows=local.rows, cols=dead_idx[local.cols], vals=local.vals, n_rows=b), sae.cfg.d_sae
    )
    aerr = apat.times(sae.W_dec).add_(err)
    aux = coeff * torch.dot(aerr.view(-1), aerr.view(-1)) / b
    return (aux, *_sparse_grads(sae, apat, aerr, 2.0 * coeff / b, x_c, 0.0))


def _add_aux(
    sae: SAE,
    pre_dead: torch.Tensor,
    dead_idx: torch.Tensor,
    err: torch.Tensor,
    x_c: torch.Tensor,
    grads: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> torch.Tensor:
    """Add the aux-k gradients into ``grads`` (W_enc^T, W_dec, b_enc; in place); return the loss."""
    z, support, nnz = _aux_dense_codes(pre_dead, sae.cfg.aux_k)
    g_wenc_t, g_wdec, col_sum = grads
    if nnz * AUX_SPARSE_BELOW < z.numel():
        aux, a_wenc_t, a_wdec, a_col = _aux_sparse(sae, z, dead_idx, err, x_c)
        g_wenc_t += a_wenc_t
        g_wdec += a_wdec
        col_sum += a_col
    else:
        aux, a_wenc_t, a_wdec, a_col = _aux_term(sae, z, support, dead_idx, err, x_c)
        g_wenc_t.index_add_(0, dead_idx, a_wenc_t)
        g_wdec.index_add_(0, dead_idx, a_wdec)
        col_sum.index_add_(0, dead_idx, a_col)
    return aux


@torch.no_grad()
def fast_step(sae: SAE, x: torch.Tensor, dead: torch.Tensor | None = None) -> StepStats:
    """One training step's loss and gradients on scaled tokens ``x (B, d_in)``.

    Sets ``.grad`` of ``W_enc, W_dec, b_enc, b_dec`` (replacing any previous value); does not
    project or step. ``dead`` is a ``(d_sae,)`` bool mask of dead latents for the aux-k loss.
    """
    cfg = sae.cfg
    b, m = x.shape[0], cfg.d_sae
    use_aux = sae.uses_aux and dead is not None and cfg.aux_coeff > 0 and cfg.aux_k > 0
    dead_idx = dead.nonzero().squeeze(1) if use_aux else None
    if dead_idx is not None and dead_idx.numel() == 0:
        dead_idx = None
    x_c = x - sae.b_dec
    codes, pre_dead = encode_select(sae, x_c, dead_idx)
    sae.observe_codes(codes.vals)
    pat = _Pattern(codes, m)
    err = pat.times(sae.W_dec).add_(sae.b_dec).sub_(x)  # x_hat - x
    err_sq = torch.dot(err.view(-1), err.view(-1))
    mse = err_sq / b
    l1 = cfg.l1_coeff / b if sae.uses_l1 else 0.0
    g_wenc_t, g_wdec, col_sum = _sparse_grads(sae, pat, err, 2.0 / b, x_c, l1)
    loss = mse
    if l1:
        dec_norm = sae.W_dec.norm(dim=1)
        loss = loss + l1 * (codes.vals * dec_norm[codes.cols]).sum()
        vsum = torch.bincount(codes.cols, weights=codes.vals, minlength=m).to(x.dtype)
        g_wdec += (l1 * vsum / dec_norm).unsqueeze(1) * sae.W_dec
    grad_b_dec = err.sum(0).mul_(2.0 / b)
    aux = torch.zeros((), device=x.device)
    if dead_idx is not None:
        aux = _add_aux(sae, pre_dead, dead_idx, err, x_c, (g_wenc_t, g_wdec, col_sum))
        loss = loss + aux
    grad_b_dec -= sae.W_enc @ col_sum
    sae.W_enc.grad = g_wenc_t.t().contiguous()
    sae.W_dec.grad = g_wdec
    sae.b_enc.grad = col_sum
    sae.b_dec.grad = grad_b_dec
    # x_c is nearly centred (b_dec ~ the data's median), so this one-pass form does not cancel.
    mean_c = x_c.mean(0)
    total_var = (torch.dot(x_c.view(-1), x_c.view(-1)) - b * torch.dot(mean_c, mean_c)).clamp_min(1e-12)
    active = codes.vals > 0
    fired = torch.zeros(m, dtype=torch.bool, device=x.device)
    fired[codes.cols[active]] = True
    return StepStats(
        loss=float(loss),
        mse=float(mse),
        aux=float(aux),
        explained_variance=float(1.0 - err_sq / total_var),
        l0=float(active.sum()) / b,
        fired=fired,
    )
