"""Batched scoring: exactly the Dice of the full apply path, from re-run slices only."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseglens_core.data.preprocess import prepare_case
from medseglens_core.interventions.apply import apply_spec
from medseglens_core.interventions.batch import SliceScorer, score_specs, slice_labels
from medseglens_core.interventions.cache import PrefixCache, logits_to_labels
from medseglens_core.interventions.spec import Edit, InterventionSpec
from medseglens_core.io import load_case
from medseglens_core.metrics import dice
from medseglens_core.models import build_model
from tests.interventions.fakes import ReluSAE


def _write_case(root: Path) -> Path:
    """A 20x24x10 case with a brain block, a random label inside it, 2 mm voxels."""
    rng = np.random.default_rng(0)
    folder = root / "C1"
    folder.mkdir()
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    brain = np.zeros((20, 24, 10), dtype=bool)
    brain[3:17, 4:21, 1:9] = True
    for m in ("t1n", "t1c", "t2w", "t2f"):
        img = np.where(brain, rng.normal(1.0, 0.3, brain.shape), 0.0).astype(np.float32)
        nib.save(nib.Nifti1Image(img, affine), folder / f"C1-{m}.nii.gz")
    seg = np.where(brain, rng.integers(0, 4, brain.shape), 0).astype(np.uint8)
    nib.save(nib.Nifti1Image(seg, affine), folder / "C1-seg.nii.gz")
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    case = load_case(_write_case(tmp_path_factory.mktemp("case")))
    model = build_model("unet", input_size=32).eval()
    cache = PrefixCache.build(model, prepare_case(case, 32), batch_size=4)
    return case, cache, ReluSAE.random(cache.channels, 32)


def test_slice_labels_match_the_full_volume_path(setup) -> None:
    case, cache, _ = setup
    ks = [1, 4, 6]
    logits = cache.baseline_logits[ks] + torch.randn(3, 4, 32, 32)
    full = cache.baseline_logits.clone()
    full[ks] = logits
    z0 = cache.prepared.record.crop[4]
    expected = logits_to_labels(cache.prepared, full)[:, :, [z0 + k for k in ks]]
    assert np.array_equal(slice_labels(cache, ks, logits), expected)


def test_score_specs_equal_apply_spec_dice(setup) -> None:
    case, cache, sae = setup
    specs = [
        InterventionSpec(),
        InterventionSpec(edits=[Edit(latent=3, op="add", value=5.0, scope="slices", slices=[2, 5])]),
        InterventionSpec(edits=[Edit(latent=j, op="scale", value=6.0, scope="active") for j in range(8)]),
    ]
    for region in ("SNFH", "WT"):
        got = score_specs(cache, SliceScorer(cache, case.label, region), sae, specs)
        want = [apply_spec(cache, sae, s, label=case.label).dice_after[region] for s in specs]
        assert got == pytest.approx(want, abs=1e-12)
    assert got[1] != got[0] or got[2] != got[0]  # the edits do change the prediction


def test_strided_scorer_scores_only_its_slices(setup) -> None:
    case, cache, _ = setup
    sc = SliceScorer(cache, case.label, "SNFH", stride=3)
    z0 = cache.prepared.record.crop[4]
    zs = [z0 + k for k in range(0, cache.n_slices, 3)]
    pred, gt = cache.baseline_labels[:, :, zs] == 2, case.label[:, :, zs] == 2
    assert sc.base == pytest.approx(dice(pred, gt))


def test_protect_keeps_the_unedited_core_on_both_paths(setup) -> None:
    """``protect: [TC]``: every voxel the unedited model called NCR or ET keeps its label; every
    other voxel is the unprotected edit's; the batched scorer gives the same Dice."""
    case, cache, sae = setup
    edits = [Edit(latent=j, op="scale", value=6.0, scope="active") for j in range(8)]
    free, kept = InterventionSpec(edits=edits), InterventionSpec(edits=edits, protect=["TC"])
    a, b = apply_spec(cache, sae, free).edited_labels, apply_spec(cache, sae, kept).edited_labels
    core = np.isin(cache.baseline_labels, (1, 3))
    assert core.any() and (a[core] != cache.baseline_labels[core]).any()  # the free edit relabels core
    assert np.array_equal(b[core], cache.baseline_labels[core])
    assert np.array_equal(b[~core], a[~core])
    for region in ("SNFH", "TC"):
        got = score_specs(cache, SliceScorer(cache, case.label, region), sae, [free, kept])
        want = [apply_spec(cache, sae, s, label=case.label).dice_after[region] for s in (free, kept)]
        assert got == pytest.approx(want, abs=1e-12)
