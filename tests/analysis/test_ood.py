"""The OOD flag's rules on hand-made profiles: known answers, no zoo."""

from __future__ import annotations

import numpy as np

from medseglens_core.analysis.ood import (
    MIN_CALIBRATION,
    CaseProfile,
    assess,
    fit_calibration,
)

STATS = ("brain_ml", "skew_t1n", "corr_t1n_t1c")


def _profile(rng: np.random.Generator, cohort: str, shift: float = 0.0, corr: float = 0.5) -> CaseProfile:
    rates = np.clip(rng.normal(0.2 + shift, 0.02, 16), 0, 1)
    stats = {"brain_ml": rng.normal(1400, 40) + 4000 * shift, "skew_t1n": rng.normal(0.3, 0.05)}
    stats["corr_t1n_t1c"] = corr
    p = CaseProfile(rates, stats)
    p.cohort, p.case_id = cohort, f"{cohort}-{rng.integers(1e9)}"
    return p


def test_same_image_four_times_is_flagged_without_any_calibration():
    block = assess(None, CaseProfile(None, {"corr_t1n_t1c": 0.999, "corr_t2w_t2f": 0.4}))
    assert block["flagged"] and block["calibrated"] is False and block["score"] is None
    assert "t1n and t1c are near-identical" in block["reasons"][0]
    assert assess(None, CaseProfile(None, {"corr_t1n_t1c": 0.9}))["flagged"] is False


def test_calibrated_flag_passes_in_distribution_and_flags_a_shift():
    rng = np.random.default_rng(0)
    ref = [_profile(rng, c) for c in ("adult", "ssa") for _ in range(6)]
    val = [_profile(rng, "adult") for _ in range(4)]
    cal = fit_calibration(ref, val)
    assert cal["calibrated"] is True
    fresh = [assess(cal, _profile(rng, "adult")) for _ in range(20)]
    assert sum(b["flagged"] for b in fresh) <= 1  # thresholds are 1.25x the worst validation case
    far = assess(cal, _profile(rng, "adult", shift=0.5))
    assert far["flagged"] and far["score"] > 1 and far["reasons"]


def test_too_few_validation_cases_give_no_threshold():
    rng = np.random.default_rng(1)
    ref = [_profile(rng, "adult") for _ in range(6)]
    cal = fit_calibration(ref, [_profile(rng, "adult") for _ in range(MIN_CALIBRATION - 1)])
    block = assess(cal, _profile(rng, "adult", shift=0.5))
    assert cal["calibrated"] is False and block["score"] is None and block["flagged"] is False
