"""The top-latent fast path (firing blocks only, one intra-op thread) against straightforward references.

``analysis.latent_cells.latent_sums`` now looks up only the (latent, slice, cell piece) blocks
where a latent fires and sums them per (latent, slice) in float64; the reference below is the
dense version it replaced (every block looked up), summing in float64. The same block tables
feed both, so voxel and label counts are equal exactly; activation sums differ by summation
order and the float32 product of each block's 4 corner codes (stated tolerance ``rtol=1e-6``). End to end, ``analyse_case`` on
both real architectures gives the labels of ``segment_case`` bit for bit and the summary of the
frozen voxel-by-voxel reference (same ranking; tolerances of ``assert_same_summary``).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from medseglens_core.analysis.encode import encode_maps, iter_prefix
from medseglens_core.analysis.latent_cells import (
    CORNER_BITS,
    FULL,
    N_PATTERNS,
    N_VALUE,
    _partial_sums,
    _used_keys,
    case_blocks,
    cell_geometry,
    latent_sums,
)
from medseglens_core.analysis.latents import analyse_case, summarise_latents
from medseglens_core.analysis.threads import one_thread
from medseglens_core.data.preprocess import prepare_case
from medseglens_core.models import build_model
from medseglens_core.models.inference import segment_case
from medseglens_core.sae.base import SAEConfig, build_sae
from tests.analysis.frozen_latents import frozen_summary
from tests.analysis.test_latents_equivalence import (
    SIZE,
    assert_same_summary,
    hook_activations,
    odd_case,
    predicted,
    random_sae,
)


def dense_latent_sums(blocks, tok: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``latent_sums`` before the firing-blocks rewrite (every block looked up), value sums in float64.

    The code it replaced summed the values in float32 (about 1e-6 relative over 2000 pieces).
    """
    n_s, z = tok.shape[:2]
    geom = blocks.geom
    n_pieces = len(geom.corners)
    n_blocks = n_pieces * z
    cv = tok[:, :, geom.corners.reshape(-1)].reshape(n_s, z, n_pieces, 4)
    pattern = (cv > 0) @ np.array(CORNER_BITS)
    block = np.arange(n_pieces)[None, :] * z + np.arange(z)[:, None]
    key = block * N_PATTERNS + pattern
    full, mixed = pattern == FULL, (pattern != 0) & (pattern != FULL)
    need = mixed & blocks.partial[block]
    keys, slot = _used_keys(key[need], n_blocks)
    table = np.concatenate(
        [np.zeros((1, N_VALUE), np.float32), blocks.full, geom.whole, _partial_sums(blocks, keys)]
    )
    row = np.where(full, 1 + block, 0)
    row = np.where(
        mixed & blocks.inside_all[block], 1 + n_blocks + np.arange(n_pieces) * N_PATTERNS + pattern, row
    )
    row = np.where(need, 1 + n_blocks + len(geom.whole) + slot[key], row)
    sums = table[row.reshape(n_s * z, n_pieces)]
    lab = blocks.label_row[block]
    row = np.where((pattern != 0) & (lab >= 0), 1 + lab * N_PATTERNS + pattern, 0)
    labels = np.concatenate([np.zeros((1, 6), np.float32), blocks.labels])[row.reshape(n_s * z, n_pieces)]
    counts = np.concatenate([sums[..., 0].sum(1, keepdims=True), labels.sum(1)], -1).astype(np.float64)
    geo = sums[..., 1:].reshape(n_s * z, n_pieces * 4, 3)
    value = np.einsum(
        "bk,bkg->bg", cv.reshape(n_s * z, n_pieces * 4).astype(np.float64), geo.astype(np.float64)
    )
    value[:, 1:] += value[:, :1] * geom.origin
    return counts.reshape(n_s, z, 7), value.reshape(n_s, z, 3)


@pytest.mark.parametrize("grid", [(1, 1), (3, 3), (6, 6), (5, 7), (12, 12), (48, 48)])
@pytest.mark.parametrize("with_gt", [True, False])
def test_latent_sums_equal_dense_reference(grid, with_gt):
    case = odd_case()
    prepared, h = hook_activations(case, grid)
    sae = random_sae("batchtopk")
    maps = encode_maps(sae, h)[:, :12]  # (Z', S, h, w): 12 latents, on and off the brain
    tok = np.ascontiguousarray(maps.permute(1, 0, 2, 3).numpy()).reshape(12, h.shape[0], -1)
    rec = prepared.record
    x0, x1, y0, y1, z0, z1 = rec.crop
    box = (slice(x0, x1), slice(y0, y1), slice(z0, z1))
    gt = case.label[box] if with_gt else None
    blocks = case_blocks(cell_geometry(rec, grid), prepared.brain_mask[box], predicted(case)[box], gt)
    counts, value = latent_sums(blocks, tok)
    ref_counts, ref_value = dense_latent_sums(blocks, tok)
    np.testing.assert_array_equal(counts, ref_counts)  # integers from the same block tables
    np.testing.assert_allclose(value, ref_value, rtol=1e-6, atol=1e-6)
    if grid != (1, 1):
        assert counts[..., 0].sum() > 0 and (counts[..., 0] == 0).any()  # some fire, not everywhere


def tiny_sae(d_in: int, seed: int = 0):
    sae = build_sae(SAEConfig(d_in=d_in, d_sae=4 * d_in, k=8, seed=seed)).eval()
    with torch.no_grad():
        sae.b_enc.fill_(-0.05)  # latents fire on part of the brain only
        sae.threshold.fill_(0.02)
    return sae


@pytest.mark.parametrize(
    ("arch", "hook"), [("unet", "dec1"), ("unet", "bottleneck"), ("segformer", "stage3")]
)
def test_analyse_case_equals_plain_segmentation_and_reference_summary(arch, hook):
    """One network pass: the labels of ``segment_case`` exactly, the frozen summary of the same activations."""
    torch.manual_seed(0)
    model = build_model(arch, input_size=SIZE).eval()
    case = odd_case(2)
    prepared = prepare_case(case, SIZE)
    hs = [p.h for _, p in iter_prefix(model, prepared.slices, hook)]
    sae = tiny_sae(hs[0].shape[1])
    labels, summary = analyse_case(model, sae, case, hook=hook, input_size=SIZE, top_k=6)
    np.testing.assert_array_equal(labels, segment_case(model, case, device="cpu").labels)
    ref = frozen_summary(sae, hs, prepared, labels, case.label, 6, affine=case.geometry.affine)
    assert_same_summary(summary, ref)
    assert summary.top_total and any(s.active_voxels for s in summary.stats.values())


def test_summary_does_not_depend_on_the_callers_thread_count():
    case = odd_case()
    prepared, h = hook_activations(case, (6, 6))
    sae = random_sae("batchtopk")
    before = torch.get_num_threads()
    try:
        out = []
        for threads in (1, 2):
            torch.set_num_threads(threads)
            s = summarise_latents(
                sae, h, prepared, predicted(case), case.label, 5, affine=case.geometry.affine
            )
            assert torch.get_num_threads() == threads  # restored
            out.append(s)
    finally:
        torch.set_num_threads(before)
    assert out[0].to_dict() == out[1].to_dict()
    for j, tok in out[0].token_maps.items():
        assert torch.equal(tok, out[1].token_maps[j])
    np.testing.assert_array_equal(out[0].firing_rate, out[1].firing_rate)


def test_one_thread_restores_the_count_in_every_thread_of_concurrent_sections():
    before = torch.get_num_threads()
    inside, release = threading.Barrier(3), threading.Event()
    after: list[int] = []

    def user():
        with one_thread():
            inside.wait()
            release.wait()
        after.append(torch.get_num_threads())

    workers = [threading.Thread(target=user) for _ in range(2)]
    for w in workers:
        w.start()
    inside.wait()  # both workers are inside their sections
    with one_thread():
        assert torch.get_num_threads() == 1
    release.set()
    for w in workers:
        w.join()
    assert after == [before, before] and torch.get_num_threads() == before
