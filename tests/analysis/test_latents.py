"""Per-volume latent summary on a planted case whose answers can be worked out by hand."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from medseglens_core.analysis.latents import analyse_case, summarise_latents
from medseglens_core.data.preprocess import prepare_case
from medseglens_core.errors import InvalidInput, NotFound
from medseglens_core.io import Case, Geometry
from tests.analysis.planted import TinyModel, TinySAE


def planted_case(blob_value: float = 3.0) -> Case:
    """16x16x4 voxels of 2 mm, whole volume is brain; channel 3 (t2f) bright in x 4..9, y 6..11."""
    rng = np.random.default_rng(0)
    img = np.empty((4, 16, 16, 4), dtype=np.float32)
    img[:3] = rng.uniform(1.0, 2.0, size=(3, 16, 16, 4))
    img[3] = 1.0
    img[3, 4:10, 6:12, :] = blob_value
    label = np.zeros((16, 16, 4), dtype=np.uint8)
    label[4:10, 6:12, :] = 2
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = [-10.0, -20.0, 5.0]
    return Case("planted", img, label, Geometry.from_affine(affine, (16, 16, 4)), cohort="ssa")


def test_summary_of_planted_blob_is_hand_checkable(tmp_path):
    case = planted_case()
    model, sae = TinyModel(), TinySAE()
    labels, summary = analyse_case(model, sae, case, hook="mid", input_size=16, top_k=3)
    assert np.array_equal(labels == 2, case.label == 2)  # the model finds the blob as SNFH
    assert summary.top_tumour[0] == 3
    s = summary.stats[3]
    assert s.active_voxels == 6 * 6 * 4
    # activation sums come from float32 tables (~1e-6 relative; see analysis/latents.py)
    np.testing.assert_allclose(s.centroid_voxel, [6.5, 8.5, 1.5], atol=1e-5)
    np.testing.assert_allclose(s.centroid_mm, [-10 + 13.0, -20 + 17.0, 5 + 3.0], atol=2e-5)
    assert s.overlap_gt["SNFH"] == {"iou": 1.0, "precision": 1.0}
    assert s.overlap_pred["SNFH"]["iou"] == 1.0 and s.overlap_pred["NCR"]["iou"] == 0.0
    m = summary.latent_map(3)
    assert m.shape == (16, 16, 4) and m.dtype == np.float32
    assert m[0, 0, 0] == 0.0 and m[6, 8, 2] == pytest.approx(s.max_activation)
    summary.write_latent_map(3, case.geometry, tmp_path / "l3.nii.gz")
    img = nib.load(tmp_path / "l3.nii.gz")
    np.testing.assert_allclose(img.affine, case.geometry.affine)
    np.testing.assert_allclose(np.asarray(img.dataobj), m)
    assert summary.to_dict()["latents"][0].keys() >= {"latent", "active_voxels", "centroid_mm", "overlap_gt"}
    with pytest.raises(NotFound):
        summary.latent_map(99)


def test_summary_rejects_wrong_activation_shape():
    case = planted_case()
    prepared = prepare_case(case, 16)
    with pytest.raises(InvalidInput):
        summarise_latents(TinySAE(), torch.zeros(2, 4, 8, 8), prepared, case.label)
