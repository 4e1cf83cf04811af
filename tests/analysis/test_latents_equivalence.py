"""The cell-table latent summary equals the frozen voxel-by-voxel one, and its helpers their references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medseglens_core.analysis.encode import (
    brain_token_mask,
    encode_fast,
    encode_maps,
    exact_columns,
    input_brain_mask,
)
from medseglens_core.analysis.latent_cells import (
    _axis_reads,
    _block_codes,
    _label_tables,
    _pattern_masks,
    case_blocks,
    cell_geometry,
)
from medseglens_core.analysis.latents import labels_to_slice_grid, summarise_latents, token_tumour_fraction
from medseglens_core.data.preprocess import prepare_case
from medseglens_core.io import Case, Geometry
from medseglens_core.sae.base import SAEConfig, build_sae, registered_architectures
from tests.analysis.frozen_latents import frozen_summary

SIZE = 48  # model input side


def odd_case(seed: int = 0) -> Case:
    """37x45x18 voxels of 1.5 x 2 x 3 mm: an ellipsoid brain, a nested tumour that leaks out of it."""
    rng = np.random.default_rng(seed)
    shape = (37, 45, 18)
    x, y, z = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij")
    brain = (x / 0.8) ** 2 + (y / 0.9) ** 2 + (z / 0.95) ** 2 <= 1.0
    r = np.sqrt(((x - 0.45) / 0.5) ** 2 + (y / 0.4) ** 2 + (z / 0.5) ** 2)
    label = np.select([r < 0.3, r < 0.6, r < 1.0], [1, 3, 2], 0).astype(np.uint8)  # partly off the brain
    image = rng.normal(size=(4, *shape)) * 0.3 + 3.0
    image[0] += 2 * x - y  # smooth structure so that latents split the brain
    image[1] += 2 * (label == 2) - (label == 1)
    image[2] += 3 * (label == 3) + z
    image[3] += 2 * (label > 0) * y
    image = (image * brain).astype(np.float32)
    affine = np.diag([1.5, 2.0, 3.0, 1.0])
    affine[:3, 3] = [-30.0, -40.0, 10.0]
    return Case("odd", image, label, Geometry.from_affine(affine, shape))


def predicted(case: Case) -> np.ndarray:
    """A plausible prediction: the ground truth shifted by 2 voxels, nothing off the brain."""
    pred = np.roll(case.label, 2, axis=0)
    pred[~np.any(case.image != 0, axis=0)] = 0
    return pred


def random_sae(arch: str, seed: int = 0):
    sae = build_sae(SAEConfig(arch=arch, d_in=4, d_sae=24, k=4, seed=seed)).eval()
    with torch.no_grad():
        sae.b_enc.fill_(-0.4)  # sparser codes: latents fire on part of the brain only
        sae.threshold.fill_(0.2)
    return sae


def hook_activations(case: Case, grid: tuple[int, int]):
    """``(prepared, h)``: a 'hook' that area-pools the 4 input channels to ``grid`` tokens."""
    prepared = prepare_case(case, SIZE)
    return prepared, F.adaptive_avg_pool2d(prepared.slices, grid) * 2.0


def assert_same_summary(new, frozen, case_tol: float = 1e-5) -> None:
    top_total, top_tumour, stats = frozen
    assert new.top_total == top_total and new.top_tumour == top_tumour
    assert sorted(new.stats) == sorted(stats)
    for j, ref in stats.items():
        got = new.stats[j]
        assert got.active_voxels == ref.active_voxels
        assert got.overlap_pred == ref.overlap_pred and got.overlap_gt == ref.overlap_gt
        assert got.max_activation == pytest.approx(ref.max_activation, rel=1e-6)
        for name in ("total_activation", "tumour_activation", "mean_activation"):
            assert getattr(got, name) == pytest.approx(getattr(ref, name), rel=case_tol, abs=1e-6)
        if ref.centroid_voxel is None:
            assert got.centroid_voxel is None
        else:
            np.testing.assert_allclose(got.centroid_voxel, ref.centroid_voxel, atol=1e-4)
            if ref.centroid_mm is None:
                assert got.centroid_mm is None
            else:
                np.testing.assert_allclose(got.centroid_mm, ref.centroid_mm, atol=1e-3)


@pytest.mark.parametrize("arch", registered_architectures())
@pytest.mark.parametrize("grid", [(1, 1), (3, 3), (6, 6), (5, 7), (12, 12), (48, 48)])
def test_summary_equals_frozen_voxel_by_voxel_summary(arch, grid):
    case = odd_case()
    sae = random_sae(arch)
    prepared, h = hook_activations(case, grid)
    pred = predicted(case)
    for gt in (case.label, None):
        new = summarise_latents(sae, h, prepared, pred, gt, top_k=5, affine=case.geometry.affine)
        assert_same_summary(new, frozen_summary(sae, h, prepared, pred, gt, 5, affine=case.geometry.affine))
        if grid == (1, 1):  # one token per slice: not brain (under half its patch), nothing fires
            continue
        assert any(s.active_voxels for s in new.stats.values())
        if gt is not None:
            assert any(s.overlap_gt["SNFH"]["iou"] > 0 for s in new.stats.values())


def test_summary_with_slice_grid_predictions_equals_frozen():
    case = odd_case(1)
    sae = random_sae("batchtopk", seed=1)
    prepared, h = hook_activations(case, (6, 6))
    pred_slices = labels_to_slice_grid(prepared, predicted(case))
    new = summarise_latents(sae, [h[:7], h[7:]], prepared, pred_slices, case.label, top_k=8)
    assert_same_summary(new, frozen_summary(sae, h, prepared, pred_slices, case.label, 8))
    # the OOD flag reuses the summary's firing rates instead of encoding the tokens again
    from medseglens_core.analysis.ood import latent_rates

    rates = latent_rates(sae, [h[:7], h[7:]], prepared)
    assert new.firing_rate is not None and 0 < new.firing_rate.max() <= 1
    np.testing.assert_allclose(new.firing_rate, rates, rtol=0, atol=1e-12)


def test_token_maps_are_the_exact_codes_the_service_maps_show():
    """Ranking may use float32 codes, but the maps (and their statistics) use ``sae.encode``'s."""
    case = odd_case()
    sae = random_sae("batchtopk")
    prepared, h = hook_activations(case, (6, 6))
    summary = summarise_latents(sae, h, prepared, predicted(case), case.label, top_k=5)
    token_brain = brain_token_mask(input_brain_mask(prepared.slices), (6, 6))
    maps = encode_maps(sae, h) * token_brain[:, None]
    for j, tok in summary.token_maps.items():
        assert torch.equal(tok, maps[:, j])


@pytest.mark.parametrize("arch", registered_architectures())
def test_exact_columns_equal_encode(arch):
    sae = random_sae(arch, seed=3)
    tokens = torch.randn(500, 4, generator=torch.Generator().manual_seed(0)) * 2
    codes, pre = encode_fast(sae, tokens)
    exact = sae.encode(tokens)
    torch.testing.assert_close(codes, exact, rtol=1e-5, atol=1e-5)
    cols = [0, 5, 17, 23]
    assert torch.equal(exact_columns(sae, tokens, pre, cols), exact[:, cols])


@pytest.mark.parametrize("grid", [(6, 6), (5, 7), (12, 12), (48, 48), (7, 3)])
def test_token_tumour_fraction_is_the_pooled_label_path(grid):
    case = odd_case()
    prepared = prepare_case(case, SIZE)
    ref = F.adaptive_avg_pool2d((labels_to_slice_grid(prepared, case.label) > 0).float()[:, None], grid)[:, 0]
    torch.testing.assert_close(
        torch.from_numpy(token_tumour_fraction(prepared, case.label, grid)), ref, rtol=0, atol=1e-6
    )


def test_brain_masks_equal_their_plain_formulas():
    slices = torch.randn(5, 4, 48, 48)
    slices[:, :, :10] = 0
    slices[:, :3, 20:25] = 0  # brain in one modality only still counts
    brain = input_brain_mask(slices)
    assert torch.equal(brain, slices.abs().sum(dim=1) > 0)
    for hw in [(6, 6), (12, 12), (5, 7), (48, 48)]:
        ref = F.adaptive_avg_pool2d(brain.float()[:, None], hw)[:, 0] >= 0.5
        assert torch.equal(brain_token_mask(brain, hw), ref)


@pytest.mark.parametrize(
    ("n_tok", "n_out", "start", "length"), [(6, 93, 7, 78), (5, 40, 0, 40), (12, 9, 1, 7)]
)
def test_pattern_masks_match_upsampled_activity_maps(n_tok, n_out, start, length):
    """Thresholding the upsampled 0/1 maps of random token patterns = the per-pattern pixel masks."""
    ax = _axis_reads(n_tok, n_out, start, length)
    ay = _axis_reads(n_tok + 1, n_out + 3, 0, n_out + 3)
    masks = _pattern_masks(ax, ay, (n_tok, n_tok + 1), (n_out, n_out + 3), (start, 0))
    bits = (torch.rand(20, 1, n_tok, n_tok + 1, generator=torch.Generator().manual_seed(0)) > 0.5).float()
    up = F.interpolate(bits, size=(n_out, n_out + 3), mode="bilinear", align_corners=False)[:, 0]
    up = up[:, start : start + length] >= 0.5
    b = bits[:, 0].long()
    i, j = torch.from_numpy(ax.lo)[:, None], torch.from_numpy(ay.lo)[None, :]
    i1, j1 = torch.from_numpy(ax.hi)[:, None], torch.from_numpy(ay.hi)[None, :]
    pattern = b[:, i, j] + 2 * b[:, i, j1] + 4 * b[:, i1, j] + 8 * b[:, i1, j1]  # (20, length, n_out + 3)
    expected = torch.from_numpy(masks)[
        torch.arange(length)[:, None], torch.arange(n_out + 3)[None, :], pattern
    ]
    assert torch.equal(expected, up)


def test_summary_without_labels_or_firing_latents():
    """A healthy case (nothing predicted, no ground truth) and an SAE whose latents never fire."""
    case = odd_case()
    prepared, h = hook_activations(case, (6, 6))
    healthy = np.zeros_like(case.label)
    sae = random_sae("batchtopk")
    new = summarise_latents(sae, h, prepared, healthy, None, top_k=5, affine=case.geometry.affine)
    assert_same_summary(new, frozen_summary(sae, h, prepared, healthy, None, 5, affine=case.geometry.affine))
    assert new.top_tumour == [] and all(s.overlap_pred["SNFH"]["iou"] == 0.0 for s in new.stats.values())
    with torch.no_grad():
        sae.b_enc.fill_(-100.0)
    silent = summarise_latents(sae, h, prepared, predicted(case), case.label, top_k=5)
    assert silent.top_total == [] and silent.top_tumour == [] and silent.stats == {}
    assert silent.to_dict() == {"top_total": [], "top_tumour": [], "latents": []}


def test_packed_label_counts_equal_plain_ones():
    """Two label counts per float32 channel (the fast path) give the same counts as six channels."""
    case = odd_case()
    prepared = prepare_case(case, SIZE)
    rec = prepared.record
    x0, x1, y0, y1, z0, z1 = rec.crop
    box = (slice(x0, x1), slice(y0, y1), slice(z0, z1))
    geom = cell_geometry(rec, (6, 6))
    blocks = case_blocks(geom, prepared.brain_mask[box], predicted(case)[box], case.label[box])
    rows = np.flatnonzero(blocks.label_row >= 0)
    codes = _block_codes(geom, prepared.brain_mask[box], predicted(case)[box], case.label[box])
    packed = _label_tables(geom, codes, rows, blocks.n_slices)
    plain = _label_tables(geom, codes, rows, blocks.n_slices, pack=False)
    assert packed.shape == plain.shape == (len(rows) * 16, 6) and plain.max() > 1
    np.testing.assert_array_equal(packed, plain)
