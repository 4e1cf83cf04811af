"""BraTS metrics against hand-computed answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from medseglens_core.errors import InvalidInput
from medseglens_core.metrics import (
    HD95_EMPTY,
    LABELS,
    REGIONS,
    dice,
    hd95,
    region_volumes_ml,
    score_segmentation,
)


def mask(shape, *voxels):
    m = np.zeros(shape, bool)
    for v in voxels:
        m[v] = True
    return m


def test_conventions():
    assert LABELS == {"NCR": 1, "SNFH": 2, "ET": 3}
    assert REGIONS == {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
    assert abs(HD95_EMPTY - 373.13) < 0.005  # diagonal of 240 x 240 x 155 at 1 mm


def test_dice_of_known_masks():
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros((4, 4, 4), bool)
    a[0, 0, :4] = True  # 4 voxels
    b[0, 0, 1:4] = True
    b[1, 1, 0:3] = True  # 6 voxels, 3 shared with a
    assert dice(a, b) == pytest.approx(2 * 3 / (4 + 6))
    assert dice(a, a) == 1.0


def test_empty_conventions():
    empty = np.zeros((5, 5, 5), bool)
    one = mask((5, 5, 5), (2, 2, 2))
    assert dice(empty, empty) == 1.0 and hd95(empty, empty, (1, 1, 1)) == 0.0
    assert dice(one, empty) == 0.0 and dice(empty, one) == 0.0
    assert hd95(one, empty, (1, 1, 1)) == HD95_EMPTY and hd95(empty, one, (2, 2, 2)) == HD95_EMPTY


def test_hd95_two_points_with_anisotropic_spacing():
    a = mask((10, 6, 12), (1, 2, 3))
    b = mask((10, 6, 12), (4, 2, 7))
    # 3 voxels at 0.5 mm along x, 4 voxels at 3 mm along z.
    assert hd95(a, b, (0.5, 2.0, 3.0)) == pytest.approx(math.hypot(3 * 0.5, 4 * 3.0))


@pytest.mark.parametrize(
    ("axis", "spacing", "expected"), [(0, (2.5, 1.0, 1.0), 25.0), (2, (0.7, 0.7, 3.0), 30.0)]
)
def test_hd95_two_cubes_a_known_distance_apart(axis, spacing, expected):
    # 2x2x2 cubes (every voxel is surface) 10 voxels apart: directed distances are 9 and 10
    # voxels, four of each; the 95th percentile (linear) of [9]*4 + [10]*4 is 10 voxels.
    shape = [6, 6, 6]
    shape[axis] = 16
    a = np.zeros(shape, bool)
    b = np.zeros(shape, bool)
    sl = [slice(2, 4)] * 3
    sl[axis] = slice(1, 3)
    a[tuple(sl)] = True
    sl[axis] = slice(11, 13)
    b[tuple(sl)] = True
    assert hd95(a, b, spacing) == pytest.approx(expected)
    assert hd95(b, a, spacing) == pytest.approx(expected)


def test_hd95_is_the_larger_directed_percentile_not_the_pooled_one():
    a = mask((3, 3, 12), (1, 1, 0))
    b = mask((3, 3, 12), (1, 1, 0), (1, 1, 10))
    # a->b: [0]; b->a: [0, 10] -> 95th pct 9.5. (Pooling [0, 0, 10] would give 9.0.)
    assert hd95(a, b, (1, 1, 1)) == pytest.approx(9.5)


def naive_hd95(a, b, spacing):
    """Reference: full-volume surfaces and distance transforms, no cropping."""
    face = ndimage.generate_binary_structure(3, 1)
    sa = a & ~ndimage.binary_erosion(a, face, border_value=0)
    sb = b & ~ndimage.binary_erosion(b, face, border_value=0)
    dab = ndimage.distance_transform_edt(~sb, sampling=spacing)[sa]
    dba = ndimage.distance_transform_edt(~sa, sampling=spacing)[sb]
    return max(np.percentile(dab, 95), np.percentile(dba, 95))


@pytest.mark.parametrize("seed", range(4))
def test_cropped_hd95_equals_full_volume_reference(seed):
    rng = np.random.default_rng(seed)
    shape = (30, 28, 20)
    a = ndimage.gaussian_filter(rng.random(shape), 2) > 0.52
    b = ndimage.gaussian_filter(rng.random(shape), 2) > 0.52
    a[0, :5, :5] = True  # touches the array border: border voxels are surface
    spacing = (0.8, 1.1, 2.4)
    assert hd95(a, b, spacing) == pytest.approx(naive_hd95(a, b, spacing), abs=1e-9)


def planted_labels():
    gt = np.zeros((20, 20, 20), np.uint8)
    gt[4:16, 4:16, 4:16] = 2  # SNFH shell
    gt[7:13, 7:13, 7:13] = 3  # ET
    gt[9:11, 9:11, 9:11] = 1  # NCR core: 8 voxels; ET = 216 - 8 = 208; SNFH = 1728 - 216 = 1512
    return gt


def test_score_segmentation_on_planted_labels():
    gt = planted_labels()
    perfect = score_segmentation(gt, gt, (1, 1, 1))
    for group in ("labels", "regions"):
        for name, m in perfect[group].items():
            assert m == {"dice": 1.0, "hd95": 0.0}, (group, name)
    no_et = gt.copy()
    no_et[no_et == 3] = 0  # the model misses enhancement entirely
    s = score_segmentation(no_et, gt, (1, 1, 1))
    assert s["labels"]["ET"] == {"dice": 0.0, "hd95": HD95_EMPTY}
    assert s["regions"]["ET"] == s["labels"]["ET"]
    assert s["labels"]["NCR"]["dice"] == 1.0 and s["labels"]["SNFH"]["dice"] == 1.0
    assert s["regions"]["TC"]["dice"] == pytest.approx(2 * 8 / (8 + 216))
    assert s["regions"]["WT"]["dice"] == pytest.approx(2 * (1728 - 208) / ((1728 - 208) + 1728))


def test_region_volumes_ml():
    vols = region_volumes_ml(planted_labels(), (1.0, 1.0, 2.0))  # 2 mm^3 = 0.002 ml per voxel
    assert vols == pytest.approx({"WT": 3.456, "TC": 0.432, "ET": 0.416, "NCR": 0.016, "SNFH": 3.024})


def test_shape_and_spacing_errors():
    with pytest.raises(InvalidInput, match="differ in shape"):
        dice(np.zeros((2, 2, 2), bool), np.zeros((2, 2, 3), bool))
    with pytest.raises(InvalidInput, match="positive voxel sizes"):
        hd95(mask((3, 3, 3), (0, 0, 0)), mask((3, 3, 3), (1, 1, 1)), (1.0, 0.0, 1.0))
    with pytest.raises(InvalidInput, match="one grid"):
        score_segmentation(np.zeros((2, 2, 2), np.uint8), np.zeros((3, 2, 2), np.uint8), (1, 1, 1))
