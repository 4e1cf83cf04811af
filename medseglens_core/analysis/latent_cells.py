"""Voxel statistics of many latents at once, without upsampling each latent to the case grid.

``PreparedCase.to_case_grid`` upsamples a token map ``(h, w)`` to the padded in-plane grid with
bilinear interpolation (``align_corners=False``): every pixel reads the same 4 tokens in every
slice -- its *cell*, rows ``(a0, a1)`` x columns ``(b0, b1)`` -- with fixed weights. So:

- whether a pixel is active (upsampled binary "fires" map >= 0.5) depends only on which of its
  cell's 4 tokens fire, one of 16 *patterns*. Which pixels each pattern makes active is found
  once per case by upsampling pattern images with the same ``F.interpolate`` call, so the
  threshold is decided by the same float32 arithmetic as on the upsampled maps;
- the upsampled activation is linear in the cell's 4 token codes.

A latent's sums over its active voxels are therefore sums over *blocks* (one slice of one cell)
of block sums that depend only on the block's pattern (only the blocks where a latent fires are
looked up, :func:`latent_sums`): nothing when no corner fires; all the
block's brain voxels when all four fire (one table for every block, a batched matmul); for a
mixed pattern, a per-geometry table when the block lies wholly inside the brain, else the exact
sums over the pattern's active brain pixels, computed once per distinct (block, pattern) that
any latent uses. Label counts (predicted and ground-truth NCR/SNFH/ET inside the brain) are
kept only for blocks that hold a label. Value sums are each corner's bilinear weight times
``(1, i, j)``, offsets from the crop box's corner so that float32 sums stay accurate; a
latent's activation sums weight them by its corner codes.

The maximum is not a sum: :func:`active_max` takes it from the upsampled maps of the few slices
that can hold it (those whose largest token code is above the best value found so far).

Cells are cut into pieces of at most ``ceil(padded / tokens)`` pixels per side so the batched
matmuls waste little on padding (the first cell also holds the clamped border pixels). The
per-piece products are laid out as one padded batch each (:func:`_by_group`) and every float
product goes through torch (:func:`mm`): one thread pool and a handful of parallel regions per
case, which matters when the cores are shared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

N_PATTERNS = 16
FULL = N_PATTERNS - 1  # all four corners fire
#: Pattern bit of each cell corner, corners ordered (a0, b0), (a0, b1), (a1, b0), (a1, b1).
CORNER_BITS = (1, 2, 4, 8)
#: Columns of a block's value sums: active brain voxels, then 4 corners x weight x (1, i, j).
N_VALUE = 1 + 4 * 3


def mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` (batched like ``np.matmul``) for float arrays, always through torch.

    numpy's own BLAS multithreads even small batched products with a second thread pool whose
    spinning threads then compete with torch's for the same cores (measured: a 2 x 914 x 1024
    product took 24 ms instead of 0.2 ms); one pool for the whole pass avoids that.
    """
    return torch.matmul(torch.from_numpy(a), torch.from_numpy(b)).numpy()


def _by_group(group: np.ndarray, cap: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Lay items out per group for ONE padded batched product (not one product per group).

    Groups with more than ``cap`` items are split into chunks of ``cap`` so that padding stays
    small. Returns ``(groups, index, g, slot)``: the group of each chunk, ``index (n_chunks,
    width)`` of each chunk's items in order (-1 pads), and each item's place ``(g, slot)``.
    """
    order = np.argsort(group, kind="stable")
    sorted_group = group[order]
    first = np.r_[True, sorted_group[1:] != sorted_group[:-1]]
    pos = np.arange(len(group)) - np.maximum.accumulate(np.where(first, np.arange(len(group)), 0))
    new_chunk = first | (pos % cap == 0)
    chunk = np.cumsum(new_chunk) - 1
    g, slot = np.empty_like(chunk), np.empty_like(pos)
    g[order], slot[order] = chunk, pos % cap
    width = int(slot.max(initial=-1)) + 1
    index = np.full((int(chunk[-1]) + 1 if len(chunk) else 0, width), -1, dtype=np.int64)
    index[g, slot] = np.arange(len(group))
    return sorted_group[new_chunk], index, g, slot


@dataclass(frozen=True)
class _AxisReads:
    """Which two tokens each output pixel along one axis reads, and their bilinear weights."""

    lo: np.ndarray  # (n,) int64
    hi: np.ndarray  # (n,) int64; lo + 1, or lo at the last token
    w_lo: np.ndarray  # (n,) float64
    w_hi: np.ndarray  # (n,) float64; 0 where hi == lo


def _axis_reads(n_tok: int, n_out: int, start: int, length: int) -> _AxisReads:
    """Reads of output pixels ``start .. start+length`` when ``n_tok`` tokens are resized to ``n_out``."""
    eye = torch.eye(n_tok)[None]
    basis = (
        eye[0] if n_tok == n_out else F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[0]
    )
    cols = basis[:, start : start + length].double().numpy().T  # (length, n_tok)
    nz = cols != 0
    rows = np.arange(length)
    lo = nz.argmax(axis=1)
    hi = n_tok - 1 - nz[:, ::-1].argmax(axis=1)
    single = hi == lo
    w_lo = cols[rows, lo]
    w_hi = np.where(single, 0.0, cols[rows, hi])
    # a pixel that reads one token with weight 1 still has a (zero-weight) second corner
    hi = np.where(single, np.minimum(lo + 1, n_tok - 1), hi)
    return _AxisReads(lo.astype(np.int64), hi.astype(np.int64), w_lo, w_hi)


def _pieces(lo: np.ndarray, max_len: int) -> np.ndarray:
    """``(n_pieces, max_len)`` pixel indices of runs of equal ``lo`` cut to ``max_len``; -1 pads."""
    n = len(lo)
    new_run = np.r_[True, lo[1:] != lo[:-1]]
    run_start = np.maximum.accumulate(np.where(new_run, np.arange(n), 0))
    pos = np.arange(n) - run_start
    new_piece = new_run | (pos % max_len == 0)
    piece = np.cumsum(new_piece) - 1
    out = np.full((int(piece[-1]) + 1, max_len), -1, dtype=np.int64)
    out[piece, pos % max_len] = np.arange(n)
    return out


def _pattern_masks(
    ax: _AxisReads, ay: _AxisReads, hw: tuple[int, int], padded: tuple[int, int], origin: tuple[int, int]
) -> np.ndarray:
    """``(cx, cy, 16)`` bool: pixel active under each pattern of its cell's 4 tokens.

    Cells whose top-left corners share row and column parity never share a token, so one image
    per (row parity, column parity, pattern) sets every such cell's corners at once.
    """
    h, w = hw
    a0 = np.repeat(np.arange(h), w)[:, None]  # every cell (a0, b0), (n_cells, 1)
    b0 = np.tile(np.arange(w), h)[:, None]
    a1, b1 = np.minimum(a0 + 1, h - 1), np.minimum(b0 + 1, w - 1)
    imgs = np.zeros((2, 2, N_PATTERNS, h, w), dtype=np.float32)
    pat = np.arange(N_PATTERNS)
    for c, (ra, rb) in enumerate(((a0, b0), (a0, b1), (a1, b0), (a1, b1))):
        imgs[a0 % 2, b0 % 2, pat[None], ra, rb] = ((pat >> c) & 1)[None]
    flat = torch.from_numpy(imgs).view(4 * N_PATTERNS, 1, h, w)
    if (h, w) != tuple(padded):
        flat = F.interpolate(flat, size=tuple(padded), mode="bilinear", align_corners=False)
    cx, cy = len(ax.lo), len(ay.lo)
    px0, py0 = origin
    up = flat.numpy().reshape(2, 2, N_PATTERNS, *padded)[..., px0 : px0 + cx, py0 : py0 + cy] >= 0.5
    # each pixel reads the image of its cell's parity class: (cx, cy, 16)
    return up[ax.lo[:, None] % 2, ay.lo[None, :] % 2, :, np.arange(cx)[:, None], np.arange(cy)[None, :]]


@dataclass(frozen=True)
class CellGeometry:
    """In-plane cells of one prepared case at one token grid (see the module docstring).

    Cells are cut into *pieces* of at most ``P`` pixels; each piece keeps its cell's corners.

    Attributes:
        pixels: ``(n_pieces, P)`` int64 crop pixel index ``i * cy + j`` (``i``, ``j`` from the crop
            box's corner), ``n_pix`` where a piece is padded.
        corners: ``(n_pieces, 4)`` int64 token index ``a * w + b`` of the cell's corners.
        active: ``(n_pieces * 16, P)`` float32, row ``piece * 16 + pattern``: 1 where the pixel is
            active under the pattern.
        values: ``(n_pieces, P, 13)`` float32 per pixel: 1, then each corner's bilinear weight x
            ``(1, i, j)``, ``(i, j)`` the voxel's offset from the crop box's corner; 0 at padding.
        whole: ``(n_pieces * 16, 13)`` float32 ``values`` summed over each pattern's active pixels
            (the sums of a block that lies wholly inside the brain).
        origin: ``(2,)`` float64 case-grid ``(x, y)`` of the crop box's corner.
        n_valid: ``(n_pieces,)`` pixels of each piece (the rest is padding).
        n_pix: crop pixels per slice, ``cx * cy``.
    """

    pixels: np.ndarray
    corners: np.ndarray
    active: np.ndarray
    values: np.ndarray
    whole: np.ndarray
    origin: np.ndarray
    n_valid: np.ndarray
    n_pix: int


def cell_geometry(record: Any, hw: tuple[int, int]) -> CellGeometry:
    """Cells of token grid ``hw`` upsampled as ``PreparedCase.to_case_grid`` does (``record``: its PrepRecord)."""
    x0, x1, y0, y1, _, _ = record.crop
    px0, _, py0, _ = record.pad
    nx, ny = record.padded_shape
    h, w = hw
    cx, cy = x1 - x0, y1 - y0
    n_pix = cx * cy
    ax, ay = _axis_reads(h, nx, px0, cx), _axis_reads(w, ny, py0, cy)
    masks = _pattern_masks(ax, ay, hw, (nx, ny), (px0, py0))  # (cx, cy, 16) bool
    rows, cols = _pieces(ax.lo, math.ceil(nx / h)), _pieces(ay.lo, math.ceil(ny / w))
    shape = (len(rows), len(cols), rows.shape[1], cols.shape[1])
    r, c = np.broadcast_to(rows[:, None, :, None], shape), np.broadcast_to(cols[None, :, None, :], shape)
    n_pieces = len(rows) * len(cols)
    valid = ((r >= 0) & (c >= 0)).reshape(n_pieces, -1)
    pixels = np.where(valid, (r * cy + c).reshape(n_pieces, -1), n_pix)
    a0, a1 = ax.lo[rows[:, 0]][:, None], ax.hi[rows[:, 0]][:, None]
    b0, b1 = ay.lo[cols[:, 0]][None, :], ay.hi[cols[:, 0]][None, :]
    corners = np.stack([a0 * w + b0, a0 * w + b1, a1 * w + b0, a1 * w + b1], -1).reshape(-1, 4)
    # per pixel: 1, corner weights x (1, i, j) with (i, j) from the crop box's corner (small
    # numbers keep float32 sums accurate; ``origin`` adds the corner back)
    weight = (
        np.stack([ax.w_lo, ax.w_hi], 1)[:, None, :, None] * np.stack([ay.w_lo, ay.w_hi], 1)[None, :, None, :]
    )
    ij = np.stack(np.meshgrid(np.arange(cx), np.arange(cy), indexing="ij"), -1).reshape(n_pix, 1, 2)
    geo = weight.reshape(n_pix, 4, 1) * np.concatenate([np.ones((n_pix, 1, 1)), ij], -1)  # (n_pix, 4, 3)
    per_pixel = np.zeros((n_pix + 1, N_VALUE), dtype=np.float32)
    per_pixel[:n_pix, 0] = 1.0
    per_pixel[:n_pix, 1:] = geo.reshape(n_pix, 12)
    values = per_pixel[pixels]  # (n_pieces, P, 13)
    act = np.r_[masks.reshape(n_pix, N_PATTERNS), np.zeros((1, N_PATTERNS), bool)][
        pixels
    ]  # (n_pieces, P, 16)
    active = np.ascontiguousarray(act.transpose(0, 2, 1), dtype=np.float32)
    whole = mm(active, values).reshape(-1, N_VALUE)
    origin = np.array([x0, y0], dtype=np.float64)
    return CellGeometry(
        pixels, corners, active.reshape(-1, pixels.shape[1]), values, whole, origin, valid.sum(1), n_pix
    )


@dataclass(frozen=True)
class CaseBlocks:
    """One case's blocks (one slice of one piece), row ``piece * Z' + z``.

    Attributes:
        geom: the :class:`CellGeometry`.
        inside: ``(n_blocks, P)`` float32, 1 on brain voxels.
        full: ``(n_blocks, 13)`` float32 block sums when all four corners fire.
        table: ``(1 + n_blocks + n_pieces * 16, 13)`` float32 value rows a firing block reads:
            a zero row, ``full``, then ``geom.whole``.
        inside_all: ``(n_blocks,)`` bool, the block lies wholly inside the brain.
        partial: ``(n_blocks,)`` bool, the block is partly inside the brain.
        label_row: ``(n_blocks,)`` int64 row of the block in ``labels``, -1 without a label.
        labels: ``(n_labelled * 16, 6)`` float32 label counts of each labelled block's active
            pixels under each pattern, row ``label_row * 16 + pattern``: predicted
            NCR/SNFH/ET, ground-truth NCR/SNFH/ET (0 without ground truth).
        n_slices: Z'.
    """

    geom: CellGeometry
    inside: np.ndarray
    full: np.ndarray
    table: np.ndarray
    inside_all: np.ndarray
    partial: np.ndarray
    label_row: np.ndarray
    labels: np.ndarray
    n_slices: int


def case_blocks(geom: CellGeometry, brain: np.ndarray, pred: np.ndarray, gt: np.ndarray | None) -> CaseBlocks:
    """Blocks of one case from crop-box arrays ``(cx, cy, Z')``: brain mask, predicted and GT labels (uint8 0..3)."""
    z = brain.shape[-1]
    n_pieces, n_p = geom.pixels.shape
    codes = _block_codes(geom, brain, pred, gt)
    inside = np.minimum(codes, 1).astype(np.float32)
    full = mm(inside.reshape(n_pieces, z, n_p), geom.values).reshape(-1, N_VALUE)
    n_valid = np.repeat(geom.n_valid, z)
    inside_all = full[:, 0] == n_valid
    partial = (full[:, 0] > 0) & ~inside_all
    rows = np.flatnonzero((codes > 1).any(1))  # blocks holding a label (the tumour region)
    label_row = np.full(n_pieces * z, -1)
    label_row[rows] = np.arange(len(rows))
    labels = _label_tables(geom, codes, rows, z)
    table = np.concatenate([np.zeros((1, N_VALUE), np.float32), full, geom.whole])
    return CaseBlocks(geom, inside, full, table, inside_all, partial, label_row, labels, z)


def _block_codes(
    geom: CellGeometry, brain: np.ndarray, pred: np.ndarray, gt: np.ndarray | None
) -> np.ndarray:
    """``(n_blocks, P)`` uint8 voxel code ``brain * (1 + pred + 4 * gt)`` of every block (0 at padding)."""
    z = brain.shape[-1]
    code = np.add(pred, 1, dtype=np.uint8)
    if gt is not None:
        code += gt * np.uint8(4)
    code *= brain
    flat = np.r_[code.reshape(geom.n_pix, z), np.zeros((1, z), np.uint8)]
    return np.ascontiguousarray(flat[geom.pixels].transpose(0, 2, 1)).reshape(-1, geom.pixels.shape[1])


def _label_tables(
    geom: CellGeometry, codes: np.ndarray, rows: np.ndarray, z: int, pack: bool = True
) -> np.ndarray:
    """``(len(rows) * 16, 6)`` label counts of blocks ``rows`` (sorted) under every pattern.

    With ``pack``, two counts share each float32 channel as ``lo + base * hi`` with ``base`` above
    the block's pixel count, so every partial sum is an integer below 2**24 and exact (half the
    work); pieces too large for that use one channel per count.
    """
    if not len(rows):
        return np.zeros((0, 6), dtype=np.float32)
    base = codes.shape[1] + 1
    per_code = np.zeros((17, 6), dtype=np.float32)  # label columns of code brain * (1 + pred + 4 * gt)
    for lab in range(1, 4):
        per_code[1 + lab + 4 * np.arange(4), lab - 1] = 1.0
        per_code[1 + np.arange(4) + 4 * lab, 2 + lab] = 1.0
    lut = per_code[:, ::2] + base * per_code[:, 1::2] if pack and base * base < 2**24 else per_code
    groups, index, g, slot = _by_group(rows // z, cap=16)
    padded = np.r_[codes[rows], np.zeros((1, codes.shape[1]), codes.dtype)]  # index -1: the zero row
    per_pixel = np.take(lut, padded[index].transpose(0, 2, 1), axis=0)  # (chunks, P, width, channels)
    active = geom.active.reshape(len(geom.values), N_PATTERNS, -1)[groups]  # (chunks, 16, P)
    out = mm(active, per_pixel.reshape(*per_pixel.shape[:2], -1))
    out = out.reshape(len(groups), N_PATTERNS, -1, lut.shape[1])[g, :, slot]  # (n, 16, channels)
    if lut is per_code:
        return out.reshape(-1, 6)
    hi = np.floor(out / base)
    return np.stack([out - base * hi, hi], -1).reshape(-1, 6)


def _partial_sums(blocks: CaseBlocks, keys: np.ndarray) -> np.ndarray:
    """``(n, 13)`` float32 sums of blocks partly inside the brain at mixed patterns (``keys`` sorted)."""
    block, pattern = keys // N_PATTERNS, keys % N_PATTERNS
    piece = block // blocks.n_slices
    groups, index, g, slot = _by_group(piece, cap=32)
    sel = np.maximum(index, 0)  # padding reads item 0 and is zeroed
    mask = blocks.inside[block[sel]] * blocks.geom.active[piece[sel] * N_PATTERNS + pattern[sel]]
    mask[index < 0] = 0.0  # (pieces, width, P): active brain pixels
    return mm(mask, blocks.geom.values[groups])[g, slot]


def _used_keys(keys: np.ndarray, n_blocks: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct ``keys`` (block * 16 + pattern), sorted, and a lookup ``(n_blocks * 16,)`` of each one's row."""
    used = np.zeros(n_blocks * N_PATTERNS, dtype=bool)
    used[keys] = True
    return np.flatnonzero(used), np.cumsum(used) - 1


def latent_sums(blocks: CaseBlocks, tok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-slice sums of latents with token maps ``tok (S, Z', h*w)`` float32 (codes, 0 off the brain).

    Returns ``(counts (S, Z', 7), value (S, Z', 3))`` float64: active brain voxels and, of them,
    predicted NCR/SNFH/ET and ground-truth NCR/SNFH/ET; sums of activation x ``(1, x, y)``.

    Only the blocks where a latent fires (pattern not 0) are looked up, each in one row of the
    value tables (and of the label table when the block holds a label); a block's value sums
    are float32, their sums per (latent, slice) float64.
    """
    n_s, z = tok.shape[:2]
    geom = blocks.geom
    n_pieces = len(geom.corners)
    n_blocks = n_pieces * z
    fires = (tok > 0).view(np.uint8)  # (S, Z', h*w)
    pattern = fires[:, :, geom.corners[:, 0]]
    for c in range(1, 4):
        pattern |= fires[:, :, geom.corners[:, c]] << np.uint8(c)  # bit c: CORNER_BITS[c]
    hit = np.flatnonzero(pattern)  # (latent, slice, piece) entries that fire, in that order
    pattern = pattern.reshape(-1)[hit].astype(np.int64)
    sz, piece = np.divmod(hit, n_pieces)  # sz: latent * Z' + slice
    block = piece * z + sz % z
    # value sums: whole-block table, geometry table (block wholly inside), partial blocks
    mixed = pattern != FULL
    row = np.where(mixed, 1 + n_blocks + piece * N_PATTERNS + pattern, 1 + block)
    row[mixed & ~blocks.inside_all[block]] = 0  # a block off the brain, or partial (below)
    need = np.flatnonzero(mixed & blocks.partial[block])
    key = block[need] * N_PATTERNS + pattern[need]
    keys, slot = _used_keys(key, n_blocks)
    sums = blocks.table[row]  # (n_hit, 13)
    sums[need] = _partial_sums(blocks, keys)[slot[key]]
    flat = (sz * tok.shape[2])[:, None] + geom.corners[piece]
    value = np.einsum("nk,nkg->ng", np.take(tok, flat), sums[:, 1:].reshape(-1, 4, 3))  # v, v*i, v*j
    out = np.zeros((n_s * z, 1 + 6 + 3))
    if len(hit):
        first = np.flatnonzero(np.r_[True, sz[1:] != sz[:-1]])
        out[sz[first], :1] = np.add.reduceat(sums[:, :1], first, axis=0, dtype=np.float64)
        out[sz[first], 7:] = np.add.reduceat(value, first, axis=0, dtype=np.float64)
    # label counts: only labelled blocks have any
    lab = blocks.label_row[block]
    labelled = np.flatnonzero(lab >= 0)
    np.add.at(out[:, 1:7], sz[labelled], blocks.labels[lab[labelled] * N_PATTERNS + pattern[labelled]])
    value = out[:, 7:]
    value[:, 1:] += value[:, :1] * geom.origin  # (i, j) -> case-grid (x, y)
    return out[:, :7].reshape(n_s, z, 7), value.reshape(n_s, z, 3)


def _slice_max(maps: np.ndarray, brain: np.ndarray, record: Any) -> np.ndarray:
    """Max of upsampled maps ``(K, h, w)`` over their active voxels in ``brain (K, cx, cy)``; -inf if none."""
    x0, x1, y0, y1, _, _ = record.crop
    px0, _, py0, _ = record.pad
    stack = torch.from_numpy(np.stack([maps, (maps > 0).astype(np.float32)], 1))
    if tuple(stack.shape[-2:]) != tuple(record.padded_shape):
        stack = F.interpolate(stack, size=tuple(record.padded_shape), mode="bilinear", align_corners=False)
    up = stack.numpy()[:, :, px0 : px0 + x1 - x0, py0 : py0 + y1 - y0]
    active = (up[:, 1] >= 0.5) & brain
    return np.where(active, up[:, 0], -np.inf).max(axis=(1, 2))


def active_max(
    tok: np.ndarray, brain: np.ndarray, has_active: np.ndarray, record: Any, per_round: int = 2
) -> np.ndarray:
    """``(S,)`` float64 max of each latent's upsampled activation over its active voxels (0 if none).

    ``tok (S, Z', h, w)`` float32 codes, ``brain (Z', cx, cy)`` bool crop, ``has_active (S, Z')``
    bool. A slice's values never exceed its largest token code (bilinear weights are convex),
    so slices are upsampled, ``per_round`` per latent and best bound first, only while their
    bound is above the best value found.
    """
    bound = tok.reshape(*tok.shape[:2], -1).max(axis=2).astype(np.float64)  # (S, Z')
    best = np.full(tok.shape[0], -np.inf)
    todo = has_active.copy()
    while True:
        todo &= bound > best[:, None]
        if not todo.any():
            break
        order = np.argsort(-np.where(todo, bound, -np.inf), axis=1, kind="stable")[:, :per_round]
        s = np.repeat(np.arange(tok.shape[0]), order.shape[1])
        z = order.reshape(-1)
        keep = todo[s, z]
        s, z = s[keep], z[keep]
        todo[s, z] = False
        np.maximum.at(best, s, _slice_max(tok[s, z], brain[z], record))
    return np.where(np.isfinite(best), best, 0.0)
