"""The invertible preprocessing chain: crop, pad to a square field of view, resample, z-score."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseglens_core.data.preprocess import EmptyBrainMask, prepare_case
from medseglens_core.io import Case, Geometry
from tests.models.conftest import planted_case


def test_identity_when_crop_is_square_and_size_matches():
    case = planted_case(shape=(30, 30, 10))
    # brain box is [3, 27) in x and y: 24 x 24 voxels; no margin, input 24 -> nothing is resampled
    prep = prepare_case(case, 24, margin_mm=0)
    rec = prep.record
    assert rec.crop == (3, 27, 3, 27, 1, 9)
    assert rec.pad == (0, 0, 0, 0) and rec.padded_shape == (24, 24)
    assert prep.slices.shape == (8, 4, 24, 24)
    assert np.array_equal(prep.labels_to_case_grid(prep.labels), case.label)
    # z-scored inside the brain: mean 0, std 1 per modality over the brain voxels
    brain = prep.slices.permute(1, 0, 2, 3).reshape(4, -1)
    assert torch.allclose(brain.mean(dim=1), torch.zeros(4), atol=1e-4)
    assert torch.allclose(brain.std(dim=1, correction=0), torch.ones(4), atol=1e-4)


def test_pad_keeps_physical_aspect_for_anisotropic_spacing():
    # 2 mm x 1 mm in-plane: a brain box of 20 x 40 voxels is 40 mm x 40 mm, so no padding is needed
    case = planted_case(shape=(26, 46, 8))
    case = Case(
        case.case_id, case.image, case.label, Geometry.from_affine(np.diag([2.0, 1.0, 1.0, 1.0]), (26, 46, 8))
    )
    rec = prepare_case(case, 32, margin_mm=0).record
    assert rec.padded_shape == (20, 40) and rec.pad == (0, 0, 0, 0)
    assert rec.pixel_mm == pytest.approx(40 / 32)


def test_round_trip_of_maps_through_a_resample():
    case = planted_case(shape=(40, 34, 10))
    prep = prepare_case(case, 64)
    assert prep.record.padded_shape[0] == prep.record.padded_shape[1]  # 1 mm isotropic: square
    back = prep.labels_to_case_grid(prep.labels)
    tumour, got = case.label > 0, back > 0
    assert 2 * (tumour & got).sum() / (tumour.sum() + got.sum()) > 0.97
    # per-slice maps at another resolution (a latent map) come back on the case grid, fill outside
    coarse = torch.ones(len(prep.z_indices), 3, 8, 8)
    grid = prep.to_case_grid(coarse, fill=-1.0)
    x0, x1, y0, y1, z0, z1 = prep.record.crop
    assert grid.shape == (3, 40, 34, 10)
    assert np.allclose(grid[:, x0:x1, y0:y1, z0:z1], 1.0) and grid[0, 0, 0, 0] == -1.0


def test_empty_volume_raises_a_named_error():
    case = planted_case()
    case = Case(case.case_id, np.zeros_like(case.image), None, case.geometry)
    with pytest.raises(EmptyBrainMask, match="zero"):
        prepare_case(case, 32)


@pytest.mark.parametrize("input_size", [24, 17])
def test_argmax_to_case_grid_equals_the_probability_grid_argmax(input_size):
    """The fast label path == probs_to_labels' labels, voxel for voxel, ties (first class) included."""
    from medseglens_core.data.preprocess import first_argmax
    from medseglens_core.models.inference import probs_to_labels

    case = planted_case(shape=(30, 28, 10))
    prep = prepare_case(case, input_size)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn((prep.slices.shape[0], 4, input_size, input_size), generator=g)
    logits[:, 2] = logits[:, 1]  # exact ties between classes 1 and 2 wherever 1 wins
    probs = torch.softmax(logits, dim=1)
    fast = prep.argmax_to_case_grid(probs, chunk=3)
    assert fast.dtype == np.uint8 and np.array_equal(fast, probs_to_labels(prep, probs)[0])
    assert torch.equal(first_argmax(probs), probs.argmax(dim=1).to(torch.uint8))
    assert (fast[~prep.brain_mask] == 0).all()


# --- the fast chain against the straightforward one it replaced ------------------------------


def _reference_prepare(case, input_size: int, margin_mm: float = 4.0):
    """The chain as first written: full-volume mask, float64 z-score, padded permuted copy, one
    antialiased interpolate (the definition the faster prepare_case must reproduce)."""
    import math

    import torch.nn.functional as F

    image = np.asarray(case.image)
    spacing = tuple(float(s) for s in case.geometry.spacing)
    mask = np.any(image != 0, axis=0)
    box = []
    for axis in range(3):
        idx = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        grow = int(math.ceil(margin_mm / spacing[axis])) if axis < 2 else 0
        box += [max(int(idx[0]) - grow, 0), min(int(idx[-1]) + 1 + grow, mask.shape[axis])]
    x0, x1, y0, y1, z0, z1 = box
    crop, cmask = image[:, x0:x1, y0:y1, z0:z1], mask[x0:x1, y0:y1, z0:z1]
    normed = np.zeros(crop.shape, dtype=np.float32)
    means, stds = [], []
    for c in range(crop.shape[0]):
        vals = crop[c][cmask].astype(np.float64)
        mean, std = float(vals.mean()), float(vals.std())
        std = std if std > 1e-8 else 1.0
        normed[c][cmask] = ((vals - mean) / std).astype(np.float32)
        means.append(mean)
        stds.append(std)
    cx, cy = x1 - x0, y1 - y0
    side = max(cx * spacing[0], cy * spacing[1])
    nx, ny = max(cx, round(side / spacing[0])), max(cy, round(side / spacing[1]))
    pad = ((nx - cx) // 2, nx - cx - (nx - cx) // 2, (ny - cy) // 2, ny - cy - (ny - cy) // 2)
    size = (input_size, input_size)
    slices = F.pad(torch.from_numpy(normed).permute(3, 0, 1, 2), (pad[2], pad[3], pad[0], pad[1]))
    slices = F.interpolate(slices, size=size, mode="bilinear", align_corners=False, antialias=True)
    lab = torch.from_numpy(np.ascontiguousarray(case.label[x0:x1, y0:y1, z0:z1], dtype=np.float32))
    lab = F.pad(lab.permute(2, 0, 1)[:, None], (pad[2], pad[3], pad[0], pad[1]))
    labels = F.interpolate(lab, size=size, mode="nearest-exact")[:, 0].to(torch.uint8)
    return slices, labels, mask, tuple(box), pad, (nx, ny), tuple(means), tuple(stds)


def _irregular_case(shape, spacing, seed: int, gap_slice: bool = False) -> Case:
    """An off-centre ellipsoid 'brain' with holes, channels zero on different voxels (the mask is
    their union), intensities on different scales per channel; optionally an empty axial slice
    inside the brain's z range."""
    rng = np.random.default_rng(seed)
    X, Y, Z = shape
    xx, yy, zz = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
    brain = ((xx - 0.15) / 0.7) ** 2 + ((yy + 0.1) / 0.55) ** 2 + (zz / 0.8) ** 2 < 1
    brain &= rng.random(shape) > 0.05
    if gap_slice:
        brain[:, :, Z // 2] = False
    image = np.zeros((4, *shape), np.float32)
    for c in range(4):
        vals = rng.normal(300.0 * (c + 1), 40.0 * (c + 1), shape).astype(np.float32)
        keep = brain & (rng.random(shape) > 0.2)
        image[c][keep] = vals[keep]
    label = np.where(brain, rng.integers(0, 4, shape), 0).astype(np.uint8)
    geometry = Geometry.from_affine(np.diag([*spacing, 1.0]), shape)
    return Case(f"irr{seed}", image, label, geometry)


IRREGULAR = [
    ((41, 33, 37), (1.0, 1.0, 1.0), 24, False),  # odd shape, several z chunks, pad in x
    ((37, 45, 23), (1.2, 0.9, 3.0), 17, True),  # anisotropic, odd model size, an empty slice
    ((30, 52, 35), (2.0, 1.0, 1.0), 32, False),  # x mm > y mm: padding in y
    ((19, 23, 40), (1.0, 1.0, 2.5), 64, True),  # crop smaller than the model size: upsampling
]


def _loader_order(case: Case) -> Case:
    """The same case in ``load_case``'s memory order: (4, Z, Y, X) in memory, viewed as (4, X, Y, Z)."""
    stack = np.empty(case.image.shape[:1] + case.image.shape[:0:-1], np.float32).transpose(0, 3, 2, 1)
    stack[...] = case.image
    return Case(case.case_id, stack, case.label, case.geometry)


@pytest.mark.parametrize(("shape", "spacing", "size", "gap"), IRREGULAR)
def test_prepare_case_matches_the_straightforward_chain_in_any_memory_order(shape, spacing, size, gap):
    """Same crop, padding and labels as the chain as first written; statistics and slices equal
    to float32 rounding (it z-scores after resampling); and the same bits from every memory order
    of the input (C, the loaders' Fortran-like order, a reversed view)."""
    case = _irregular_case(shape, spacing, seed=sum(shape), gap_slice=gap)
    slices, labels, mask, box, pad, padded, mean, std = _reference_prepare(case, size)
    prep = prepare_case(case, size)
    rec = prep.record
    assert (rec.crop, rec.pad, rec.padded_shape) == (box, pad, padded)
    assert np.allclose(rec.mean, mean, rtol=1e-6) and np.allclose(rec.std, std, rtol=1e-6)
    assert np.array_equal(prep.brain_mask, mask)
    assert prep.slices.dtype == torch.float32 and prep.slices.is_contiguous()
    assert prep.slices.shape == slices.shape
    assert float((prep.slices - slices).abs().max()) < 1e-5 * float(slices.abs().max())
    assert float(prep.slices.abs().max()) > 1.0  # not trivially close: real z-scores
    assert torch.equal(prep.labels, labels)
    assert prepare_case(case, size, with_labels=False).labels is None
    loader = _loader_order(case)
    assert loader.image[0].flags.f_contiguous
    flipped = Case(
        case.case_id, np.ascontiguousarray(case.image[:, ::-1])[:, ::-1], case.label, case.geometry
    )
    assert min(flipped.image.strides) < 0
    for other in (loader, flipped):
        again = prepare_case(other, size)
        assert again.record == rec
        assert again.slices.numpy().tobytes() == prep.slices.numpy().tobytes()  # bit for bit


def test_prepare_case_gives_the_same_bits_on_any_thread_count():
    """Training data and served inputs must not depend on the machine's core count."""
    case = _irregular_case((41, 33, 37), (1.0, 1.0, 1.0), seed=5)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = prepare_case(case, 24)
        torch.set_num_threads(2)
        two = prepare_case(case, 24)
    finally:
        torch.set_num_threads(threads)
    assert one.record == two.record
    assert one.slices.numpy().tobytes() == two.slices.numpy().tobytes()


def test_statistics_stay_exact_for_intensities_far_from_zero():
    """A scanner offset of 1e5 with a spread of 1: the mean and standard deviation inside the
    brain match float64's over the same float32 voxels to a thousandth of the spread (float32
    sums of squares minus the squared mean would lose every digit here), and the slices are
    the z-scores of the chain as first written."""
    base = _irregular_case((30, 26, 33), (1.0, 1.0, 1.0), seed=11)
    rng = np.random.default_rng(12)
    brain = np.any(base.image != 0, axis=0)
    image = np.zeros_like(base.image)
    for c in range(4):
        image[c][brain] = (1e5 * (c + 1) + rng.normal(0.0, 1.0 + c, int(brain.sum()))).astype(np.float32)
    far = prepare_case(Case("far", image, base.label, base.geometry), 24)
    for c in range(4):
        vals = image[c][brain].astype(np.float64)
        assert abs(far.record.mean[c] - vals.mean()) < 1e-3 * vals.std()  # float32 sums: 1e-8 relative
        assert far.record.std[c] == pytest.approx(vals.std(), rel=1e-4)
    slices, *_ = _reference_prepare(Case("far", image, base.label, base.geometry), 24)
    assert float((far.slices - slices).abs().max()) < 1e-3


def _same_but_rounding_ties(got: np.ndarray, want: np.ndarray, grid: np.ndarray) -> None:
    """``got == want`` except where the two largest of ``grid``'s classes are within 4 float32 ulps."""
    top2 = np.sort(grid, axis=0)[-2:]
    near_tie = top2[1] - top2[0] <= 4 * np.finfo(np.float32).eps * top2[1]
    differ = got != want
    assert not (differ & ~near_tie).any(), np.argwhere(differ & ~near_tie)[:5]
    assert differ.sum() <= max(1, differ.size // 10_000)


@pytest.mark.parametrize(("shape", "spacing", "size", "gap"), IRREGULAR)
def test_argmax_to_case_grid_matches_the_full_grid_on_irregular_cases(shape, spacing, size, gap):
    """The resampled foreground windows, the brain's box and the 4-class argmax tree give the
    labels of the full (4, X, Y, Z) probability grid's first argmax inside the brain, exact ties
    included; only where two classes tie to float32 rounding after resampling may they differ."""
    case = _irregular_case(shape, spacing, seed=sum(shape) + 1, gap_slice=gap)
    prep = prepare_case(case, size)
    g = torch.Generator().manual_seed(len(shape) + size)
    logits = torch.randn((prep.slices.shape[0], 4, size, size), generator=g)
    logits[::3, 0] += 20.0  # every third slice background everywhere: skipped
    logits[1::3, 3] = logits[1::3, 0] + (logits[1::3, 0] > 0) * 20.0  # ties with class 0 and wins
    logits[:, 2] = torch.where(logits[:, 1] > 0, logits[:, 1], logits[:, 2])  # ties 1 vs 2
    probs = torch.softmax(logits, dim=1)
    probs[2::3, 3] = probs[2::3, 0]  # exact ties with class 0 on whole slices: class 0 wins
    grid = prep.to_case_grid(probs)
    x0, x1, y0, y1, z0, z1 = prep.record.crop
    want = np.zeros(prep.record.case_shape, np.uint8)
    want[x0:x1, y0:y1, z0:z1] = grid[:, x0:x1, y0:y1, z0:z1].argmax(axis=0)
    want[~prep.brain_mask] = 0
    before = probs.clone()
    for chunk in (8, 2, 1):
        _same_but_rounding_ties(prep.argmax_to_case_grid(probs, chunk=chunk), want, grid)
    _same_but_rounding_ties(prep.argmax_to_case_grid(probs.double()), want, grid)
    assert torch.equal(probs, before)  # the caller's probabilities are left alone
    # non-consecutive slices to resample (gathered, not a view), and maps already on the padded grid
    sparse = probs.clone()
    sparse[1::2, 0] = 1.0
    full = torch.nn.functional.interpolate(
        sparse, size=prep.record.padded_shape, mode="bilinear", align_corners=False
    )
    grid = prep.to_case_grid(sparse)
    want = np.zeros(prep.record.case_shape, np.uint8)
    want[x0:x1, y0:y1, z0:z1] = grid[:, x0:x1, y0:y1, z0:z1].argmax(axis=0)
    want[~prep.brain_mask] = 0
    _same_but_rounding_ties(prep.argmax_to_case_grid(sparse, chunk=3), want, grid)
    assert np.array_equal(prep.argmax_to_case_grid(full), want)  # on the padded grid: no resampling
    assert not prep.argmax_to_case_grid(probs[:, :1]).any()  # one class: all background
    # small foreground blobs (the usual case): only windows around them are resampled
    blobs = probs.clone()
    blobs[:, 0] = 1.0
    h = size
    for k, (r, c) in enumerate([(h // 2, h // 2), (0, 0), (h - 2, h - 3), (h // 2, 1)] * blobs.shape[0]):
        if k < blobs.shape[0] and k % 3 != 1:
            blobs[k, 0, r : r + 2, c : c + 3] = 0.0  # classes 1-3 win there
    grid = prep.to_case_grid(blobs)
    want = np.zeros(prep.record.case_shape, np.uint8)
    want[x0:x1, y0:y1, z0:z1] = grid[:, x0:x1, y0:y1, z0:z1].argmax(axis=0)
    want[~prep.brain_mask] = 0
    assert want.any()
    for chunk in (8, 1):
        _same_but_rounding_ties(prep.argmax_to_case_grid(blobs, chunk=chunk), want, grid)


def test_a_window_around_samples_that_downsampling_drops_is_empty():
    from medseglens_core.data.preprocess import _window, bilinear_weights

    wts = bilinear_weights(10, 4)  # sources 2 and 7 get no weight
    assert not wts.w[:, 2].any() and wts.w[:, 3].any()
    brain = np.ones(4, bool)
    assert _window(np.eye(10, dtype=bool)[2], wts, brain, 0) is None
    assert _window(np.eye(10, dtype=bool)[3], wts, brain, 0) == (1, 2, 3, 5)
    # maps larger than the padded grid with foreground only on such samples: all background
    case = planted_case(shape=(30, 28, 10))
    prep = prepare_case(case, 16)
    n = prep.record.padded_shape[0]
    big = torch.zeros((prep.slices.shape[0], 4, 5 * n, 5 * n))
    big[:, 0] = 1.0
    dropped = np.flatnonzero(~bilinear_weights(5 * n, n).w.numpy().any(axis=0))
    big[:, 2, dropped[len(dropped) // 2], :] = 2.0
    assert not prep.argmax_to_case_grid(big).any()


def test_brain_mask_and_first_argmax_match_their_definitions():
    from medseglens_core.data.preprocess import brain_mask, first_argmax

    rng = np.random.default_rng(5)
    image = np.where(rng.random((4, 9, 8, 7)) > 0.8, rng.normal(size=(4, 9, 8, 7)), 0).astype(np.float32)
    assert np.array_equal(brain_mask(image), np.any(image != 0, axis=0))
    for classes in (2, 3, 4, 5):
        for n in (1, 6):
            maps = torch.from_numpy(rng.integers(0, 3, (n, classes, 5, 4)).astype(np.float32))  # ties
            before = maps.clone()
            assert torch.equal(first_argmax(maps), maps.argmax(dim=1).to(torch.uint8))
            assert torch.equal(maps, before)


def test_crop_box_is_the_bounding_box_grown_in_plane_and_clipped():
    from medseglens_core.data.preprocess import crop_box

    rng = np.random.default_rng(6)
    for _ in range(20):
        mask = np.zeros((12, 10, 9), dtype=bool)
        lo = rng.integers(0, [12, 10, 9])
        hi = lo + rng.integers(1, [12, 10, 9] - lo + 1)
        mask[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))] = rng.random(tuple(hi - lo)) > 0.7
        mask[tuple(lo)] = mask[tuple(hi - 1)] = True  # the box is exactly [lo, hi)
        mask = np.asfortranarray(mask) if rng.random() > 0.5 else mask
        spacing, margin = (1.0, 2.0, 3.0), 2.5
        grow = (3, 2, 0)  # ceil(2.5 / spacing) in plane, none through plane
        expect = []
        for axis in range(3):
            expect += [max(int(lo[axis]) - grow[axis], 0), min(int(hi[axis]) + grow[axis], mask.shape[axis])]
        assert crop_box(mask, spacing, margin) == tuple(expect)
