"""Diff controls: the null split of one cohort finds nothing; the same test finds a planted effect."""

import numpy as np

from medseglens_core.analysis.diff import CaseLatentStats, CohortStats, DiffCriteria, compare_cohorts
from medseglens_core.analysis.report import _subset, null_control


def _cohort(rates: np.ndarray) -> CohortStats:
    n, d = rates.shape
    return CohortStats(
        case_ids=[f"c{i}" for i in range(n)],
        firing_rate=rates,
        mean_activation=rates,
        mean_active=np.ones((n, d)),
        region_mass=np.zeros((n, d, 4)),
        n_tokens=np.full(n, 1000),
        region_tokens=np.full((n, 4), 250.0),
    )


def test_null_split_finds_nothing_and_subset_keeps_cases():
    rng = np.random.default_rng(1)
    cs = _cohort(rng.uniform(0.05, 0.1, size=(10, 32)))
    out = null_control(cs, 32, DiffCriteria(n_perm=2000))
    assert out["found"] == 0 and out["n_a"] == 5 and out["n_b"] == 5
    sub = _subset(cs, np.array([0, 3]))
    assert sub.case_ids == ["c0", "c3"] and sub.firing_rate.shape == (2, 32)
    assert null_control(_subset(cs, np.arange(3)), 32, DiffCriteria())["found"] is None


def test_planted_effect_is_found_by_the_same_test():
    rng = np.random.default_rng(2)
    base = rng.uniform(0.05, 0.1, size=(10, 32))
    planted = base.copy()
    planted[:, 5] *= 8.0  # one latent fires eight times more after the planted shift
    st = CaseLatentStats(d_sae=32, cohorts={"planted": _cohort(planted), "unshifted": _cohort(base)})
    found = [
        d.latent for d in compare_cohorts(st, "planted", "unshifted", DiffCriteria(n_perm=2000)) if d.specific
    ]
    assert found == [5]


def test_tumour_contrast_finds_a_latent_whose_whole_brain_rate_hides_it():
    rng = np.random.default_rng(3)
    n, d = 10, 16
    rates = rng.uniform(0.05, 0.1, size=(2, n, d))
    a, b = _cohort(rates[0]), _cohort(rates[1])
    for cs in (a, b):
        cs.region_mass = np.ones((n, d, 4)) * 10 * rng.uniform(0.9, 1.1, size=(n, d, 4))
    a.region_mass[:, 7, 1:] *= 8.0  # latent 7: eight times the activation per tumour token
    st = CaseLatentStats(d_sae=d, cohorts={"t": a, "r": b})
    on = [x.latent for x in compare_cohorts(st, "t", "r", DiffCriteria(n_perm=2000)) if x.specific]
    off = [
        x
        for x in compare_cohorts(st, "t", "r", DiffCriteria(n_perm=2000, tumour_contrast=False))
        if x.specific
    ]
    assert on == [7] and off == []
