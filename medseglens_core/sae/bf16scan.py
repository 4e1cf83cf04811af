"""Exact above-threshold codes from a bfloat16 encoder GEMM with a proven error bound.

On a CPU with native bfloat16 dot products (AVX512-BF16, AMX) a ``bf16 x bf16 -> fp32
accumulate`` GEMM ran 2.2-3.4x faster than the float32 one here (Zen 4, one thread). The
training step only needs the pre-activations above one threshold (BatchTopK's candidate
threshold), so the bf16 product is used as a FILTER and never as a value:

1. ``x_c`` and ``W_enc`` (the bias folded in as one more input column of ones) are rounded to
   bf16; the product ``v ~ x_c @ W_enc + b_enc`` comes out in bf16.
2. Every entry whose exact float32 value can exceed ``thr`` is kept: rounding to bf16 moves
   each element by at most ``u = 2^-8`` of itself, so by Cauchy-Schwarz the real products of
   the rounded and of the exact operands differ in row ``i`` by at most

       E_i = ||x_i|| max_j ||w_j|| ((1 + u)^2 - 1 + 2 g (1 + u)^2)

   (augmented norms; ``g = K 2^-24 / (1 - K 2^-24)`` bounds any-order float32 accumulation of
   ``K`` terms, once for the bf16 GEMM and once for the recomputation below), so a recomputed
   value above ``thr`` implies ``v >= round_down(thr - E_i)`` (rounding to bf16 is monotone).
   The test is one integer compare per entry on the bf16 bits (for positive thresholds their
   int16 order is their order).
3. The candidates' values are recomputed in float32 by a sampled product (``sampled_addmm``:
   one dot product per entry, independent of the other entries and of the thread count) and
   those above ``thr`` are returned, sorted by (row, col).

The returned set is exactly the entries whose recomputed value exceeds ``thr``: the same set the
float32 path selects, up to float32 rounding of entries at the threshold itself. Used only
where it is fast (:data:`NATIVE_BF16`) and for positive thresholds (else ``None``: the caller
takes the float32 path).
"""

from __future__ import annotations

import numpy as np
import torch

from medseglens_core.sae.select import codes_from_flat, csr

__all__ = ["NATIVE_BF16", "above_threshold"]


def _native_bf16() -> bool:
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


# Whether this CPU has bf16 dot-product instructions (elsewhere the bf16 GEMM is emulated and
# slower than the float32 one). Tests set it to exercise the path on any CPU.
NATIVE_BF16 = _native_bf16()
# Rows of the bf16 product per chunk (a 256 x d_sae bf16 chunk is 1 MiB for d_sae 2048).
CHUNK_ROWS = 256
_EPS32 = 2.0**-24
_U = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits, round to nearest)


class _Operands:
    """The bf16 operands of one step and the per-row bound on their product's error."""

    def __init__(self, x_c: torch.Tensor, w_enc: torch.Tensor, b_enc: torch.Tensor, bufs: dict) -> None:
        b, d = x_c.shape
        m = w_enc.shape[1]
        k = d + 1 + (-(d + 1)) % 8  # the bias column, padded to a multiple of 8
        xb = bufs.get("x")
        if xb is None or xb.shape != (b, k):
            xb = bufs["x"] = torch.zeros(b, k, dtype=torch.bfloat16)
            xb[:, d] = 1.0
        wb = bufs.get("w")
        if wb is None or wb.shape != (m, k):
            wb = bufs["w"] = torch.zeros(m, k, dtype=torch.bfloat16)
        xb[:, :d].copy_(x_c)
        wb[:, :d].copy_(w_enc.t())  # (m, k): the layout oneDNN's bf16 GEMM runs fastest on
        wb[:, d].copy_(b_enc)
        self.x, self.w_t = xb, wb.t()  # (B, k) and (k, m): the GEMM's operands
        # Rounding to bf16 moves each element by at most U of itself, so with the augmented
        # norms ||x_i|| (bias column 1) and W = max_j ||w_j|| (bias row b_j) the real products
        # differ by at most ||x_i|| W ((1 + U)^2 - 1); each of the two float32 accumulations
        # (the bf16 GEMM's, the recomputation's) adds at most g (1 + U)^2 ||x_i|| W.
        x_norm = (x_c.square().sum(1) + 1.0).sqrt()
        w_norm = float((w_enc.square().sum(0) + b_enc.square()).sqrt().max())
        g = k * _EPS32 / (1 - k * _EPS32)
        c = ((1 + _U) ** 2 - 1 + 2 * g * (1 + _U) ** 2) * w_norm
        # 0.1% and 1e-6 on top: the norms are float32 sums themselves
        self.bound = x_norm.mul_(c * 1.001).add_(1e-6)


def _round_down_bits(t: torch.Tensor) -> np.ndarray:
    """int16 bits of the largest bfloat16 <= ``t`` (``t > 0``, float32)."""
    tb = t.to(torch.bfloat16)
    bits = tb.view(torch.int16) - (tb.float() > t).to(torch.int16)
    return bits.numpy()


def above_threshold(
    x_c: torch.Tensor, w_enc: torch.Tensor, b_enc: torch.Tensor, thr: float, bufs: dict
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Flat row-major indices (int64, increasing) and float32 values of the entries of
    ``x_c @ w_enc + b_enc`` above ``thr``, filtered by a bf16 GEMM (see the module docstring).

    ``bufs`` is a dict the caller keeps across steps (the bf16 buffers are reused). Returns
    ``None`` where the bound does not keep every row's filter threshold positive.
    """
    b, m = x_c.shape[0], w_enc.shape[1]
    ops = _Operands(x_c, w_enc, b_enc, bufs)
    t = thr - ops.bound
    if not bool((t > 0).all()):
        return None
    bits = _round_down_bits(t)
    rows = min(b, CHUNK_ROWS)
    chunk = bufs.get("chunk")
    if chunk is None or chunk.shape[0] < rows or chunk.shape[1] != m:
        chunk = bufs["chunk"] = torch.empty(rows, m, dtype=torch.bfloat16)
    parts = []
    for r0 in range(0, b, rows):
        r1 = min(b, r0 + rows)
        out = chunk[: r1 - r0]
        torch.mm(ops.x[r0:r1], ops.w_t, out=out)
        found = np.flatnonzero(out.view(torch.int16).numpy() >= bits[r0:r1, None])
        parts.append(torch.from_numpy(found.astype(np.int64, copy=False)).add_(r0 * m))
    idx = torch.cat(parts)
    vals = _recompute(x_c, w_enc, b_enc, idx)
    keep = (vals > thr).nonzero().squeeze(1)
    return idx.index_select(0, keep), vals.index_select(0, keep)


def _recompute(
    x_c: torch.Tensor, w_enc: torch.Tensor, b_enc: torch.Tensor, idx: torch.Tensor
) -> torch.Tensor:
    """float32 ``(x_c @ w_enc + b_enc)`` at the flat indices ``idx`` (one dot product each)."""
    b, m = x_c.shape[0], w_enc.shape[1]
    at = codes_from_flat(idx, idx, b, m)
    pattern = csr(torch.bincount(at.rows, minlength=b), at.cols, b_enc.index_select(0, at.cols), (b, m))
    return torch.sparse.sampled_addmm(pattern, x_c, w_enc).values()
