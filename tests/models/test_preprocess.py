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
