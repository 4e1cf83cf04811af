"""Power and calibration of the population-specific test on planted per-case firing rates.

Each synthetic case has its own random effect per latent (cases differ far more than tokens of
one case), rates are log-normal with many zeros, like the real SAE statistics. Two cohorts from
the SAME distribution must give (almost) no specific latents; planted 4-fold shifts must be found
with 10 cases per cohort, and the old test (Mann-Whitney on 6 vs 6 cases) could not.
"""

from __future__ import annotations

import numpy as np
import pytest

from medseglens_core.analysis.diff import CaseLatentStats, CohortStats, DiffCriteria, compare_cohorts
from medseglens_core.analysis.stats import permutation_test

D, PLANTED = 300, np.arange(20)


def _cohort(rng: np.random.Generator, base: np.ndarray, n: int) -> CohortStats:
    rate = base * np.exp(rng.normal(0.0, 0.5, (n, D)))  # case-level spread (log-normal)
    rate[rng.random((n, D)) < 0.05] = 0.0  # a latent silent in a few cases
    z = np.zeros((n, D))
    return CohortStats(
        case_ids=[f"c{i}" for i in range(n)],
        firing_rate=np.clip(rate, 0, 1),
        mean_activation=np.clip(rate, 0, 1),
        mean_active=z,
        region_mass=np.full((n, D, 4), np.nan),
        n_tokens=np.full(n, 1000),
    )


def _stats(seed: int, n: int, planted_fold: float) -> CaseLatentStats:
    """Two cohorts of ``n`` cases sharing per-latent base rates; ``PLANTED`` latents x fold."""
    rng = np.random.default_rng(seed)
    base = np.exp(rng.normal(-5.0, 1.0, D))  # median rate 0.007; some below min_pooled_rate
    base[PLANTED] = 0.02
    shifted = base.copy()
    shifted[PLANTED] *= planted_fold
    return CaseLatentStats(
        d_sae=D, cohorts={"adult": _cohort(rng, base, n), "target": _cohort(rng, shifted, n)}
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_distribution_gives_no_specific_latents(seed):
    stats = _stats(seed, n=10, planted_fold=1.0)
    spec = [d for d in compare_cohorts(stats, "target", "adult") if d.specific]
    assert len(spec) <= 1


def test_planted_shifts_are_found_with_ten_cases_and_not_by_chance():
    stats = _stats(3, n=10, planted_fold=4.0)
    diffs = compare_cohorts(stats, "target", "adult")
    found = {d.latent for d in diffs if d.specific}
    assert len(found & set(PLANTED.tolist())) >= 12
    assert len(found - set(PLANTED.tolist())) <= 1
    assert all(d.direction == "up" for d in diffs if d.specific)
    # untested (rare) latents are reported but never specific
    assert any(not d.tested for d in diffs)


def test_mwu_on_six_cases_has_no_power_but_welch_does():
    stats = _stats(4, n=6, planted_fold=4.0)
    mwu = [d for d in compare_cohorts(stats, "target", "adult", DiffCriteria(test="mwu")) if d.specific]
    welch = [d for d in compare_cohorts(stats, "target", "adult", DiffCriteria(test="welch")) if d.specific]
    assert mwu == []  # exact two-sided p >= 2/924 cannot survive BH over ~200 latents
    assert len(welch) >= 3


def test_permutation_test_exact_and_random():
    t = np.array([[3.0, 1.0], [4.0, 2.0], [5.0, 1.5]])
    r = np.array([[0.0, 1.2], [1.0, 1.8], [2.0, 1.1]])
    p = permutation_test(t, r)
    # column 0: only the observed split and its mirror reach |diff| = 3 -> 2/20
    assert p[0] == pytest.approx(0.1)
    assert 0.5 < p[1] <= 1.0
    big_t = np.arange(12.0)[:, None] + 100.0
    big_r = np.arange(12.0)[:, None]
    p_rand = permutation_test(big_t, big_r, n_perm=999)
    assert p_rand[0] == pytest.approx(1 / 1000)  # C(24, 12) > 999: random relabellings
