"""Diff controls: the null split of one cohort finds nothing; the same test finds a planted effect."""

import numpy as np
import pytest

from medseglens_core.analysis.diff import CaseLatentStats, CohortStats, DiffCriteria, compare_cohorts
from medseglens_core.analysis.report import _subset, null_control
from medseglens_core.errors import InvalidInput


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
        for x in compare_cohorts(
            st, "t", "r", DiffCriteria(n_perm=2000, tumour_contrast=False, region_contrasts=())
        )
        if x.specific
    ]
    assert on == [7] and off == []


def _region_pair(seed: int, n: int = 10, d: int = 16):
    rng = np.random.default_rng(seed)
    rates = rng.uniform(0.05, 0.1, size=(2, n, d))
    a, b = _cohort(rates[0]), _cohort(rates[1])
    for cs in (a, b):
        cs.region_mass = 10 * rng.uniform(0.9, 1.1, size=(n, d, 4))
    return a, b


def test_region_contrast_finds_a_latent_that_fires_less_on_oedema_only():
    a, b = _region_pair(4)
    a.region_mass[:, 9, 2] /= 8.0  # latent 9: an eighth of the activation per SNFH token only
    st = CaseLatentStats(d_sae=16, cohorts={"t": a, "r": b})
    found = [x for x in compare_cohorts(st, "t", "r", DiffCriteria(n_perm=2000)) if x.specific]
    assert [x.latent for x in found] == [9]
    assert found[0].families == {"SNFH": "down"} and found[0].direction == "down"
    # the pooled tumour contrast dilutes it below the two-fold threshold: only the region finds it
    only_tumour = DiffCriteria(n_perm=2000, region_contrasts=())
    assert not [x for x in compare_cohorts(st, "t", "r", only_tumour) if x.specific]


def test_region_contrasts_find_nothing_between_two_draws_of_one_population():
    a, b = _region_pair(5)
    st = CaseLatentStats(d_sae=16, cohorts={"t": a, "r": b})
    assert not [x for x in compare_cohorts(st, "t", "r", DiffCriteria(n_perm=2000)) if x.specific]


def test_region_contrasts_skip_cohorts_without_labels():
    a, b = _region_pair(6)
    a.region_mass[:, 9, 2] /= 8.0
    a.region_tokens = b.region_tokens = None  # unlabelled: no neighbourhood contrast can run
    st = CaseLatentStats(d_sae=16, cohorts={"t": a, "r": b})
    assert not [x for x in compare_cohorts(st, "t", "r", DiffCriteria(n_perm=2000)) if x.specific]


def test_unknown_region_contrast_is_a_clear_error():
    a, b = _region_pair(7)
    st = CaseLatentStats(d_sae=16, cohorts={"t": a, "r": b})
    with pytest.raises(InvalidInput, match="region contrasts"):
        compare_cohorts(st, "t", "r", DiffCriteria(region_contrasts=("oedema",)))


def test_one_benjamini_hochberg_runs_over_every_family_and_latent():
    from medseglens_core.analysis.diff import _decide, _Family

    def fam(name, p):
        n = len(p)
        return _Family(name, np.array(p), np.full(n, -1.0), np.full(n, -2.0), np.ones(n, dtype=bool))

    a, b = fam("brain", [0.001, 0.011]), fam("SNFH", [0.03, 0.9])
    _decide([a, b], DiffCriteria())
    # BH over the four p-values together: 0.001*4/1, 0.011*4/2, 0.03*4/3, 0.9*4/4
    np.testing.assert_allclose(a.q, [0.004, 0.022])
    np.testing.assert_allclose(b.q, [0.04, 0.9])
    assert a.specific.tolist() == [True, True] and b.specific.tolist() == [True, False]
    untested = fam("ET", [0.0001, 0.0001])
    untested.tested[:] = False  # untested latents neither count in the correction nor pass
    _decide([untested, fam("brain", [0.001, 0.011])], DiffCriteria())
    assert untested.q.tolist() == [1.0, 1.0] and not untested.specific.any()
