"""Sparse code selection: candidates per chunk of tokens, global top-n without sorting.

The fast training step (:mod:`medseglens_core.sae.step`) computes encoder pre-activations one
row chunk at a time into a small reused buffer (about 1 MiB, so it stays in the CPU's L2
cache) and collects each chunk's candidate codes right away, while the chunk is still in
cache: the full ``(B, d_sae)`` pre-activation matrix is never written to memory, never
re-read, and no fresh 32 MiB buffer is page-faulted in per step.

All indices here are FLAT row-major positions ``row * d_sae + col`` (int64), and every
function returns them in increasing order, so the codes come out sorted by (row, col) with no
sort.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from medseglens_core.sae.base import SparseCodes

__all__ = [
    "batch_topk_select",
    "candidates_above",
    "codes_from_flat",
    "csr",
    "first_hint",
    "kth_smallest",
    "numpy_view",
    "top_n_in_order",
]


# Dtypes whose CPU tensors the candidate scan hands to NumPy (bfloat16 has no NumPy dtype).
_NUMPY_SCAN = (torch.float32, torch.float64, torch.float16)


def candidates_above(pre: torch.Tensor, thr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Entries of ``pre (r, m)`` strictly above ``thr``: (flat indices int64, values), in order.

    On CPU the scan is NumPy's compare + ``flatnonzero`` on a view of the same memory: the same
    indices as ``(flat > thr).nonzero()`` (``thr`` rounded to ``pre``'s dtype, as torch does),
    about 3x faster on one core, where torch's ``nonzero`` counts and writes in two passes.
    """
    flat = pre.reshape(-1)
    a = numpy_view(flat)
    if a is None:
        idx = (flat > thr).nonzero().squeeze(1)
    else:
        idx = torch.from_numpy(np.flatnonzero(a > a.dtype.type(thr)).astype(np.int64, copy=False))
    return idx, flat.index_select(0, idx)


def first_hint(pre: torch.Tensor, n_per_row: int) -> float:
    """A starting candidate threshold from one chunk ``pre (r, m)``: the value that about twice
    ``n_per_row * r`` of its entries exceed (>= 0). Used on the very first step only."""
    flat = pre.reshape(-1)
    keep = min(flat.numel(), max(1, 2 * n_per_row * pre.shape[0]))
    return max(0.0, float(flat.topk(keep, sorted=False).values.min()))


def numpy_view(t: torch.Tensor) -> np.ndarray | None:
    """A NumPy view of a CPU float tensor (no copy), or ``None`` where NumPy cannot take it."""
    if t.device.type == "cpu" and t.dtype in _NUMPY_SCAN and not t.requires_grad:
        return t.numpy()
    return None


def kth_smallest(vals: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k``-th smallest (1-based) of a 1-d ``vals``, as a 0-d tensor: ``vals.kthvalue(k)``.

    On CPU through NumPy's introselect (``np.partition``), about 15x faster than torch's
    ``kthvalue`` on a few hundred thousand values; the value is the same element.
    """
    a = numpy_view(vals)
    if a is None:
        return vals.kthvalue(k).values
    return torch.tensor(np.partition(a, k - 1)[k - 1], dtype=vals.dtype)


def top_n_in_order(idx: torch.Tensor, vals: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``n`` largest of ``vals`` with their ``idx``, keeping the input order (no sort).

    Finds the n-th largest value with one selection (``kthvalue``) and keeps everything above it
    plus, among entries equal to it, the first ones in order until there are exactly ``n``.
    """
    c = vals.numel()
    if c <= n:
        return idx, vals
    kth = kth_smallest(vals, c - n + 1)
    keep = vals > kth
    short = n - int(keep.sum())
    if short > 0:  # ties at the n-th value: take the first ones (a topk would pick arbitrarily)
        ties = (vals == kth).nonzero().squeeze(1)[:short]
        keep[ties] = True
    sel = keep.nonzero().squeeze(1)
    return idx.index_select(0, sel), vals.index_select(0, sel)


def codes_from_flat(idx: torch.Tensor, vals: torch.Tensor, n_rows: int, m: int) -> SparseCodes:
    """:class:`SparseCodes` from sorted flat indices into a ``(n_rows, m)`` matrix."""
    rows = torch.div(idx, m, rounding_mode="floor")
    return SparseCodes(rows=rows, cols=idx - rows * m, vals=vals, n_rows=n_rows)


def batch_topk_select(pre: torch.Tensor, n: int, hint: float | None) -> tuple[SparseCodes, float]:
    """Top ``n`` positive entries of a whole ``pre (B, m)`` over the batch, without a full sort.

    ``hint`` is a lower bound guess for the n-th value (e.g. last step's with a margin;
    ``None``: estimated from ``pre``). Exact for any hint: when fewer than ``n`` entries pass it,
    all positive entries are taken instead. Returns the codes sorted by (row, col) and the next
    hint (0.9 times the smallest kept value). The training step does the same chunk by chunk.
    """
    b, m = pre.shape
    n = min(n, pre.numel())
    if hint is None:
        hint = first_hint(pre, max(1, n // b))
    idx, vals = candidates_above(pre, max(hint, 0.0))
    if idx.numel() < n and hint > 0.0:
        idx, vals = candidates_above(pre, 0.0)
    idx, vals = top_n_in_order(idx, vals, n)
    next_hint = 0.9 * float(vals.min()) if vals.numel() else 0.0
    return codes_from_flat(idx, vals, b, m), next_hint


def csr(
    crow_counts: torch.Tensor, cols: torch.Tensor, vals: torch.Tensor, shape: tuple[int, int]
) -> torch.Tensor:
    """CSR from per-row entry counts and row-grouped column indices / values."""
    crow = torch.zeros(shape[0] + 1, dtype=cols.dtype, device=cols.device)
    torch.cumsum(crow_counts, 0, out=crow[1:])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Sparse CSR tensor support is in beta.*")
        return torch.sparse_csr_tensor(crow, cols, vals, shape, check_invariants=False)
