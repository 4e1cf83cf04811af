"""Cross-dataset diff: BH, case-level tests, attribution and SAE alignment on planted structure."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseglens_core.analysis.casepass import analyse_slices
from medseglens_core.analysis.diff import (
    CaseLatentStats,
    CohortStats,
    align_saes,
    compare_cohorts,
    population_specific,
    reliance,
)
from medseglens_core.analysis.stats import benjamini_hochberg, case_level_test
from medseglens_core.errors import InvalidInput
from tests.analysis.planted import TinyModel, TinySAE, planted_slices


def test_bh_matches_hand_computed():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # ranks 2,4,3,1 -> p*m/rank = .02,.04,.04,.02 -> step-up minimum keeps them
    np.testing.assert_allclose(benjamini_hochberg(p), [0.02, 0.04, 0.04, 0.02])
    np.testing.assert_allclose(benjamini_hochberg(np.array([0.5, 0.01])), [0.5, 0.02])
    with pytest.raises(InvalidInput):
        benjamini_hochberg(np.array([1.5]))


def test_case_level_test_effect_and_constant_columns():
    t = np.array([[3.0, 1.0], [4.0, 1.0], [5.0, 1.0]])
    r = np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 1.0]])
    p, eff = case_level_test(t, r)
    assert eff[0] == pytest.approx(1.0)  # every target case above every reference case
    assert p[0] == pytest.approx(0.1)  # exact two-sided MWU, n=3 vs 3: 2/20
    assert p[1] == 1.0 and eff[1] == 0.0


def _planted_stats(regions=("SNFH",)) -> CaseLatentStats:
    model, sae = TinyModel(), TinySAE()
    cohorts = {}
    for ci, cohort in enumerate(("adult", "ssa")):
        rows = []
        for i in range(8):
            x, brain, lab = planted_slices(cohort, seed=100 * ci + i)
            rows.append(
                analyse_slices(
                    model,
                    sae,
                    x,
                    "mid",
                    case_id=f"{cohort}{i}",
                    brain=brain,
                    label_slices=lab,
                    regions=regions,
                    batch_size=3,
                )
            )
        cohorts[cohort] = CohortStats.from_rows(rows)
    return CaseLatentStats(d_sae=8, cohorts=cohorts)


def test_planted_latent_is_population_specific_and_drives_snfh():
    stats = _planted_stats()
    specific = population_specific(stats, "ssa", "adult")
    assert [d.latent for d in specific] == [3]
    assert specific[0].q < 0.05 and specific[0].direction == "up"
    assert stats["adult"].firing_rate[:, 3].max() == 0.0
    # blob = 6x6 input px = 3x3 tokens of 6x6 brain tokens per slice -> 9/36
    np.testing.assert_allclose(stats["ssa"].firing_rate[:, 3], 0.25)
    everything = {d.latent: d for d in compare_cohorts(stats, "ssa")}
    assert not everything[0].specific and everything[0].q > 0.05
    attr = stats["ssa"].attribution["SNFH"].mean(axis=0)
    assert int(np.argmax(attr)) == 3
    # predicted SNFH pixels: h3 = 1.5, gain 6 -> z*grad = 9 per pixel
    assert attr[3] == pytest.approx(9.0)
    assert reliance(stats, "SNFH", top_k=1)["ssa"] == [(3, pytest.approx(9.0))]
    # the planted latent's activation mass is all in SNFH
    assoc = stats.region_association()
    assert assoc[3, 2] == pytest.approx(1.0)


def test_align_saes_recovers_planted_permutation():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(48, 32, generator=g)
    perm = torch.randperm(48, generator=g)
    w_b = w[perm] + 0.05 * torch.randn(48, 32, generator=g)
    al = align_saes(w, w_b, threshold=0.7)
    mapping = {a: b for a, b, _ in al.pairs}
    assert all(perm[mapping[a]].item() == a for a in range(48))
    assert al.fraction_above == 1.0
    unrelated = align_saes(w, torch.randn(48, 32, generator=g), threshold=0.7)
    assert unrelated.fraction_above == 0.0
    with pytest.raises(InvalidInput):
        align_saes(w, torch.randn(8, 16))


def test_max_slices_subsamples_brain_slices():
    x, brain, lab = planted_slices("ssa", seed=1, z=6)
    row = analyse_slices(TinyModel(), TinySAE(), x, "mid", brain=brain, label_slices=lab, max_slices=2)
    assert row.n_tokens == 2 * 36  # 6x6 brain tokens per slice
    np.testing.assert_allclose(row.firing_rate[3], 0.25)
