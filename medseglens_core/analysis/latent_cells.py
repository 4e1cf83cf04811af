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
of block sums that depend only on the block's pattern: nothing when no corner fires, the whole
block's brain voxels when all four fire (one table for every block, a batched matmul), and for
the mixed patterns the exact sums over the pattern's active brain pixels, computed once per
distinct (block, pattern) that any latent uses. Block sums are voxel counts (brain, predicted
and ground-truth NCR/SNFH/ET inside the brain) and each corner's bilinear weight times
``(1, x, y)``; a latent's activation sums weight the latter by its corner codes.

The maximum is not a sum: :func:`active_max` takes it from the upsampled maps of the few slices
that can hold it (those whose largest token code is above the best value found so far).

Cells are cut into pieces of at most ``ceil(padded / tokens)`` pixels per side so the batched
matmuls waste little on padding (the first cell also holds the clamped border pixels).
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
#: Columns of a block's value sums: active brain voxels, then 4 corners x weight x (1, x, y).
N_VALUE = 1 + 4 * 3


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
    a0 = torch.arange(h).repeat_interleave(w)[:, None]  # every cell (a0, b0), (n_cells, 1)
    b0 = torch.arange(w).repeat(h)[:, None]
    a1, b1 = (a0 + 1).clamp_max(h - 1), (b0 + 1).clamp_max(w - 1)
    imgs = torch.zeros(2, 2, N_PATTERNS, h, w)
    pat = torch.arange(N_PATTERNS)
    for c, (ra, rb) in enumerate(((a0, b0), (a0, b1), (a1, b0), (a1, b1))):
        bit = ((pat >> c) & 1).float()
        imgs[a0 % 2, b0 % 2, pat[None], ra, rb] = bit[None].expand(len(a0), -1)
    flat = imgs.view(4 * N_PATTERNS, 1, h, w)
    if (h, w) != tuple(padded):
        flat = F.interpolate(flat, size=tuple(padded), mode="bilinear", align_corners=False)
    cx, cy = len(ax.lo), len(ay.lo)
    px0, py0 = origin
    up = flat.view(2, 2, N_PATTERNS, *padded)[..., px0 : px0 + cx, py0 : py0 + cy]
    up = up.permute(3, 4, 0, 1, 2)  # (cx, cy, 2, 2, 16)
    i = torch.arange(cx)[:, None]
    j = torch.arange(cy)[None, :]
    pix = up[i, j, torch.from_numpy(ax.lo % 2)[:, None], torch.from_numpy(ay.lo % 2)[None, :]]
    return (pix >= 0.5).numpy()


@dataclass(frozen=True)
class CellGeometry:
    """In-plane cells of one prepared case at one token grid (see the module docstring).

    Attributes:
        pixels: ``(n_cells, P)`` int64 crop pixel index ``i * cy + j`` (``i``, ``j`` from the crop
            box's corner), ``n_pix`` where a piece is padded.
        corners: ``(n_cells, 4)`` int64 token index ``a * w + b`` of each cell's corners.
        active: ``(n_cells * 16, P)`` float32, row ``cell * 16 + pattern``: 1 where the pixel is
            active under the pattern.
        values: ``(n_cells, P, 13)`` float32 per pixel: 1, then each corner's bilinear weight x
            ``(1, dx, dy)``, ``(dx, dy)`` voxels from the piece's first pixel; 0 at padding.
        whole: ``(n_cells * 16, 13)`` float32 ``values`` summed over each pattern's active pixels
            (the sums of a block that lies wholly inside the brain).
        origin: ``(n_cells, 2)`` float64 case-grid ``(x, y)`` of each piece's first pixel.
        n_pix: crop pixels per slice, ``cx * cy``.
    """

    pixels: torch.Tensor
    corners: torch.Tensor
    active: torch.Tensor
    values: torch.Tensor
    whole: torch.Tensor
    origin: torch.Tensor
    n_pix: int


def cell_geometry(record: Any, hw: tuple[int, int]) -> CellGeometry:
    """Cells of token grid ``hw`` upsampled as ``PreparedCase.to_case_grid`` does (``record``: its PrepRecord)."""
    x0, x1, y0, y1, _, _ = record.crop
    px0, _, py0, _ = record.pad
    nx, ny = record.padded_shape
    h, w = hw
    cx, cy = x1 - x0, y1 - y0
    ax, ay = _axis_reads(h, nx, px0, cx), _axis_reads(w, ny, py0, cy)
    masks = _pattern_masks(ax, ay, hw, (nx, ny), (px0, py0))  # (cx, cy, 16) bool
    rows, cols = _pieces(ax.lo, math.ceil(nx / h)), _pieces(ay.lo, math.ceil(ny / w))
    r = torch.from_numpy(rows)[:, None, :, None]  # (nr, 1, R, 1)
    c = torch.from_numpy(cols)[None, :, None, :]  # (1, nc, 1, C)
    valid = ((r >= 0) & (c >= 0)).reshape(len(rows) * len(cols), -1)
    n_pix = cx * cy
    pixels = torch.where(valid, (r.clamp_min(0) * cy + c.clamp_min(0)).reshape(valid.shape), n_pix)
    a0, a1 = torch.from_numpy(ax.lo[rows[:, 0]]), torch.from_numpy(ax.hi[rows[:, 0]])
    b0, b1 = torch.from_numpy(ay.lo[cols[:, 0]]), torch.from_numpy(ay.hi[cols[:, 0]])
    corners = torch.stack(
        [a0[:, None] * w + b0, a0[:, None] * w + b1, a1[:, None] * w + b0, a1[:, None] * w + b1], dim=-1
    ).reshape(-1, 4)
    # per pixel: 1, corner weights x (1, dx, dy) with (dx, dy) from the piece's first pixel, so
    # that float32 sums stay accurate; ``origin`` holds that pixel's case-grid (x, y)
    weight = (
        np.stack([ax.w_lo, ax.w_hi], 1)[:, None, :, None] * np.stack([ay.w_lo, ay.w_hi], 1)[None, :, None, :]
    )
    per_pixel = torch.from_numpy(np.r_[weight.reshape(n_pix, 4), np.zeros((1, 4))]).float()
    corner_w = per_pixel.index_select(0, pixels.reshape(-1)).view(*pixels.shape, 4, 1)
    first_r, first_c = torch.from_numpy(rows[:, 0]), torch.from_numpy(cols[:, 0])
    dx = (r.clamp_min(0) - first_r[:, None, None, None]).expand(-1, len(cols), -1, cols.shape[1])
    dy = (c.clamp_min(0) - first_c[None, :, None, None]).expand(len(rows), -1, rows.shape[1], -1)
    rel = torch.stack([torch.ones_like(dx), dx, dy], -1).reshape(*pixels.shape, 1, 3).float()
    values = torch.cat([valid.float()[..., None], (corner_w * rel).flatten(2)], -1)  # (n_cells, P, 13)
    origin = torch.stack(
        [(x0 + first_r).repeat_interleave(len(cols)), (y0 + first_c).repeat(len(rows))], 1
    ).double()
    flat = pixels.reshape(-1)
    act = torch.from_numpy(np.r_[masks.reshape(n_pix, N_PATTERNS), np.zeros((1, N_PATTERNS), bool)])
    active = act.index_select(0, flat).view(*pixels.shape, N_PATTERNS).transpose(1, 2).float()
    whole = torch.bmm(active, values).view(-1, N_VALUE)
    return CellGeometry(pixels, corners, active.reshape(-1, pixels.shape[1]), values, whole, origin, n_pix)


def _label_lut(with_gt: bool) -> torch.Tensor:
    """``(17, 6)`` label columns of voxel code ``brain * (1 + pred + 4 * gt)`` (GT columns 0 without GT)."""
    lut = torch.zeros(17, 6)
    for pred in range(1, 4):
        lut[1 + pred + 4 * np.arange(4), pred - 1] = 1.0
    if with_gt:
        for gt in range(1, 4):
            lut[1 + np.arange(4) + 4 * gt, 2 + gt] = 1.0
    return lut


@dataclass(frozen=True)
class CaseBlocks:
    """One case's blocks (one slice of one cell), row ``cell * Z' + z``.

    Attributes:
        geom: the :class:`CellGeometry`.
        inside: ``(n_blocks, P)`` float32, 1 on brain voxels.
        codes: ``(n_blocks, P)`` uint8 voxel code ``brain * (1 + pred + 4 * gt)`` (0..16).
        full: ``(n_blocks, 13)`` float32 block sums when all four corners fire.
        full_labels: ``(n_blocks, 6)`` float32 label counts when all four corners fire.
        inside_all: ``(n_blocks,)`` bool, the block lies wholly inside the brain.
        partial: ``(n_blocks,)`` bool, the block is partly inside the brain.
        labelled: ``(n_blocks,)`` bool, the block holds a labelled voxel.
        lut: ``(17, 6)`` label columns of each code.
        n_slices: Z'.
    """

    geom: CellGeometry
    inside: torch.Tensor
    codes: torch.Tensor
    full: torch.Tensor
    full_labels: torch.Tensor
    inside_all: torch.Tensor
    partial: torch.Tensor
    labelled: torch.Tensor
    lut: torch.Tensor
    n_slices: int


def case_blocks(geom: CellGeometry, brain: np.ndarray, pred: np.ndarray, gt: np.ndarray | None) -> CaseBlocks:
    """Blocks of one case from crop-box arrays ``(cx, cy, Z')``: brain mask, predicted and GT labels (uint8 0..3)."""
    z = brain.shape[-1]
    n_cells, n_p = geom.pixels.shape
    code = np.add(pred, 1, dtype=np.uint8)
    if gt is not None:
        code += gt * np.uint8(4)
    code *= brain
    flat = torch.cat([torch.from_numpy(code.reshape(geom.n_pix, z)), torch.zeros(1, z, dtype=torch.uint8)])
    cells = flat.index_select(0, geom.pixels.reshape(-1)).view(n_cells, n_p, z)
    codes = cells.transpose(1, 2).reshape(n_cells * z, n_p)  # (blocks, P)
    inside = codes.clamp(max=1).float()
    full = torch.bmm(inside.view(n_cells, z, n_p), geom.values).view(-1, N_VALUE)
    n_in = full[:, 0]
    n_valid = (geom.pixels < geom.n_pix).sum(1).repeat_interleave(z)
    lut = _label_lut(gt is not None)
    labelled = torch.from_numpy((codes.numpy() > 1).any(1))
    full_labels = torch.zeros(n_cells * z, 6)
    rows = labelled.nonzero()[:, 0]
    if len(rows):
        full_labels[rows] = _label_sums(codes[rows], inside[rows], lut)
    inside_all = n_in == n_valid
    partial = (n_in > 0) & ~inside_all
    return CaseBlocks(geom, inside, codes, full, full_labels, inside_all, partial, labelled, lut, z)


def _label_sums(codes: torch.Tensor, weights: torch.Tensor, lut: torch.Tensor) -> torch.Tensor:
    """``(n, 6)``: label columns summed over each row's pixels, pixel ``p`` weighted by ``weights[:, p]``."""
    hist = torch.zeros(codes.shape[0], lut.shape[0]).scatter_add_(1, codes.long(), weights)
    return hist @ lut


def _active_inside(blocks: CaseBlocks, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cell, mask (n, P))`` of ``keys = block * 16 + pattern``: active brain pixels of each."""
    block, pattern = keys // N_PATTERNS, keys % N_PATTERNS
    cell = block // blocks.n_slices
    rows = blocks.geom.active.index_select(0, cell * N_PATTERNS + pattern)
    return cell, blocks.inside.index_select(0, block) * rows


def _partial_sums(blocks: CaseBlocks, keys: torch.Tensor) -> torch.Tensor:
    """``(n, 13)`` float32 sums of blocks partly inside the brain at mixed patterns (``keys`` sorted)."""
    cell, mask = _active_inside(blocks, keys)
    out = torch.empty(len(keys), N_VALUE)
    bounds = torch.searchsorted(cell, torch.arange(blocks.geom.values.shape[0] + 1)).tolist()
    for c, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):  # keys are sorted by cell
        if hi > lo:
            out[lo:hi] = mask[lo:hi] @ blocks.geom.values[c]
    return out


def _mixed_label_sums(blocks: CaseBlocks, keys: torch.Tensor) -> torch.Tensor:
    """``(n, 6)`` label counts of labelled blocks at mixed patterns."""
    _, mask = _active_inside(blocks, keys)
    return _label_sums(blocks.codes.index_select(0, keys // N_PATTERNS), mask, blocks.lut)


def _used_keys(keys: torch.Tensor, n_blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct ``keys`` (block * 16 + pattern), sorted, and a lookup ``(n_blocks * 16,)`` of each one's row."""
    used = torch.zeros(n_blocks * N_PATTERNS, dtype=torch.bool)
    used[keys] = True
    return used.nonzero()[:, 0], used.long().cumsum(0) - 1


def latent_sums(blocks: CaseBlocks, tok: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-slice sums of latents with token maps ``tok (S, Z', h*w)`` (codes, 0 off the brain).

    Returns ``(counts (S, Z', 7), value (S, Z', 3))`` float64: active brain voxels and, of them,
    predicted NCR/SNFH/ET and ground-truth NCR/SNFH/ET; sums of activation x ``(1, x, y)``.
    """
    n_s, z = tok.shape[:2]
    geom = blocks.geom
    n_cells = geom.corners.shape[0]
    n_blocks = n_cells * z
    cv = tok[:, :, geom.corners.reshape(-1)].view(n_s, z, n_cells, 4)  # corner codes
    pattern = ((cv > 0).long() * torch.tensor(CORNER_BITS)).sum(-1)  # (S, Z', cells)
    block = torch.arange(n_cells)[None, :] * z + torch.arange(z)[:, None]  # (Z', cells)
    key = block * N_PATTERNS + pattern
    full, mixed = pattern == FULL, (pattern != 0) & (pattern != FULL)
    # value sums: whole-block table, geometry table (block wholly inside), partial blocks
    need = mixed & blocks.partial[block]
    keys, slot = _used_keys(key[need], n_blocks)
    table = torch.cat([torch.zeros(1, N_VALUE), blocks.full, geom.whole, _partial_sums(blocks, keys)])
    row = torch.where(full, 1 + block, 0)
    row = torch.where(
        mixed & blocks.inside_all[block], 1 + n_blocks + torch.arange(n_cells) * N_PATTERNS + pattern, row
    )
    row = torch.where(need, 1 + n_blocks + len(geom.whole) + slot[key], row)
    sums = table.index_select(0, row.reshape(-1)).view(n_s * z, n_cells, N_VALUE)
    # label counts: only labelled blocks have any
    need = mixed & blocks.labelled[block]
    keys, slot = _used_keys(key[need], n_blocks)
    table = torch.cat([torch.zeros(1, 6), blocks.full_labels, _mixed_label_sums(blocks, keys)])
    row = torch.where(full & blocks.labelled[block], 1 + block, 0)
    row = torch.where(need, 1 + n_blocks + slot[key], row)
    labels = table.index_select(0, row.reshape(-1)).view(n_s * z, n_cells, 6)
    counts = torch.cat([sums[..., :1].sum(1), labels.double().sum(1)], -1).view(n_s, z, 7)
    geo = sums[..., 1:].reshape(n_s * z, n_cells, 4, 3)
    flat_cv = cv.reshape(n_s * z, 1, n_cells * 4)
    value = torch.bmm(flat_cv, geo.reshape(n_s * z, n_cells * 4, 3))[:, 0].double()  # (1, dx, dy) sums
    mass = (cv.reshape(n_s * z, n_cells, 4) * geo[..., 0]).sum(-1).double()  # activation sum per piece
    value[:, 1:] += mass @ geom.origin  # (dx, dy) -> case-grid (x, y)
    value = value.view(n_s, z, 3)
    return counts, value


def _slice_max(maps: torch.Tensor, brain: torch.Tensor, record: Any) -> torch.Tensor:
    """Max of upsampled maps ``(K, h, w)`` over their active voxels in ``brain (K, cx, cy)``; -inf if none."""
    x0, x1, y0, y1, _, _ = record.crop
    px0, _, py0, _ = record.pad
    stack = torch.stack([maps, (maps > 0).float()], 1)
    if tuple(stack.shape[-2:]) != tuple(record.padded_shape):
        stack = F.interpolate(stack, size=tuple(record.padded_shape), mode="bilinear", align_corners=False)
    stack = stack[:, :, px0 : px0 + x1 - x0, py0 : py0 + y1 - y0]
    active = (stack[:, 1] >= 0.5) & brain
    return torch.where(active, stack[:, 0], -torch.inf).amax(dim=(1, 2))


def active_max(
    tok: torch.Tensor, brain: torch.Tensor, has_active: torch.Tensor, record: Any, per_round: int = 2
) -> torch.Tensor:
    """``(S,)`` float64 max of each latent's upsampled activation over its active voxels (0 if none).

    ``tok (S, Z', h, w)`` codes, ``brain (Z', cx, cy)`` bool crop, ``has_active (S, Z')`` bool.
    A slice's values never exceed its largest token code (bilinear weights are convex), so
    slices are upsampled, ``per_round`` per latent and best bound first, only while their bound
    is above the best value found.
    """
    bound = tok.flatten(2).amax(2)  # (S, Z')
    best = torch.full((tok.shape[0],), -torch.inf, dtype=torch.float64)
    todo = has_active.clone()
    while True:
        todo &= bound.double() > best[:, None]
        if not todo.any():
            break
        top = torch.where(todo, bound, -torch.inf).topk(min(per_round, tok.shape[1]), dim=1)
        keep = top.values > -torch.inf
        s = torch.arange(tok.shape[0])[:, None].expand_as(top.indices)[keep]
        z = top.indices[keep]
        todo[s, z] = False
        found = _slice_max(tok[s, z], brain[z], record).double()
        best = best.scatter_reduce(0, s, found, reduce="amax")
    return torch.where(torch.isfinite(best), best, 0.0)
