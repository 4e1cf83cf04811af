"""Recovery on a planted setup: the oedema latent fires 5x weaker in the target cohort."""

from __future__ import annotations

import numpy as np
import pytest

from medseglens_core.interventions.batch import SliceScorer, score_specs
from medseglens_core.interventions.recovery import RecoveryConfig, run_recovery
from medseglens_core.interventions.report import render_recovery_html
from medseglens_core.interventions.search import FamilyGrid, VolumeItem, profile, rank_candidates
from medseglens_core.interventions.steer import fit_steering, pack, select_latents, steering_spec
from tests.interventions.fakes import (
    identity_sae,
    planted_items,
)

GRID = FamilyGrid(sizes=(2,), clamp_active=(2.0,), clamp_region=(1.0,), scale_region=(4.0,), dilations=(4,))
CFG = RecoveryConfig(
    calib_n=2, n_candidates=2, dilation=6, grid=GRID, screen_stride=2, steer_steps=4, steer_blind=True
)


_items = planted_items


@pytest.fixture(scope="module")
def cohorts() -> tuple[list[VolumeItem], list[VolumeItem]]:
    return _items("adult", 0.5, range(4)), _items("ssa", 0.1, range(10, 15))


def test_ranking_puts_the_suppressed_oedema_latent_first(cohorts) -> None:
    src, tgt = cohorts
    sae = identity_sae()
    ps = [profile(i, sae, "SNFH", 6) for i in src]
    pt = [profile(i, sae, "SNFH", 6) for i in tgt]
    assert ps[0].attribution[1] > 0 > ps[0].attribution[2]  # oedema latent helps, ET latent competes
    ranking = rank_candidates(ps, pt, 2)
    assert ranking.latents == [1]  # the only latent with positive reliance
    assert ranking.target_mean[0] < 0.5 * ranking.source_mean[0]
    # full oedema cells hold channel 1 = 0.5 (the noise averages out over a 4x4 cell)
    assert ranking.reference[1] == pytest.approx(0.5, abs=0.05)


def test_fitted_steering_adds_the_oedema_direction_and_repairs(cohorts) -> None:
    _, tgt = cohorts
    sae, model = identity_sae(), tgt[0].cache.model
    packs = [pack(i.cache, i.cache.prepared.labels, dilation=4, stride=1) for i in tgt[:2]]
    latents = select_latents(model, sae, packs, 2)
    assert latents[0] == 1
    coeffs = fit_steering(model, sae, packs, latents, steps=10, lr=0.5)
    assert coeffs[0] > 0.1
    spec = steering_spec(latents, coeffs, 1.0, dilation=4)
    item = tgt[3]
    sc = SliceScorer(item.cache, item.label, "SNFH")
    (after,) = score_specs(item.cache, sc, sae, [spec])
    assert sc.base == 0.0 and after > 0.5


@pytest.mark.parametrize("protocol", ["oracle", "blind", "blind-unlabelled"])
def test_protocols_recover_the_planted_failures(cohorts, protocol: str) -> None:
    src, tgt = cohorts
    doc = run_recovery(
        identity_sae(), src, tgt, protocol, model_id="m", source="adult", target="ssa", config=CFG
    )
    expected_cases = 5 if protocol == "oracle" else 3
    assert doc["n_cases"] == expected_cases and doc["n_failures"] == expected_cases
    assert doc["dice_before"] == 0.0
    assert doc["recovered_fraction"] == 1.0 and doc["dice_after"] > 0.5
    assert doc["source_dice_change"] >= -0.01
    if protocol != "oracle":
        assert doc["calibration"]["target_case_ids"] == ["ssa-10", "ssa-11"]
        assert {e["latent"] for e in doc["spec"]["edits"]} == {1}
        assert doc["spec"]["protect"] == ["TC"]  # the repair may not relabel the unedited core
        assert all(r["spec"] is not None for r in doc["cases"])
        assert doc["selection"]["reason"] is None
    if protocol == "blind":
        sel = doc["selection"]
        assert sel["candidates"] >= sel["harmless_at_screen"] >= sel["confirmed"] >= sel["keep_core"] >= 1
        assert sel["best_calibration_dice"] > 0.5 > sel["calibration_dice_before"] == 0.0
        g = doc["gate"]  # 2 calibration targets vs 2 source scans; the page says what the gate did
        assert 0 <= g["leave_one_out_target_errors"] <= min(g["leave_one_out_errors"], 2)
        page = render_recovery_html([doc])
        assert "<b>Gate:</b>" in page and f"leave-one-out errors {g['leave_one_out_errors']} of 4" in page
        assert ("none kept" in page) != g["fitted"]
        assert "(unedited labels kept in TC)" in page
    if protocol == "oracle":
        assert "selection" not in doc


def test_blind_refuses_specs_that_harm_the_source(cohorts) -> None:
    src, tgt = cohorts
    strict = RecoveryConfig(**{**CFG.__dict__, "source_tolerance": -1.0})  # nothing can pass
    doc = run_recovery(
        identity_sae(), src, tgt, "blind", model_id="m", source="adult", target="ssa", config=strict
    )
    assert doc["spec"]["edits"] == [] and doc["recovered_fraction"] == 0.0
    assert np.isclose(doc["dice_after"], doc["dice_before"])
    assert doc["selection"]["harmless_at_screen"] == 0
    assert doc["selection"]["reason"].startswith("no candidate kept the source calibration cases")


def test_screened_harm_of_a_no_op_spec_is_zero() -> None:
    """Screened scores compare with the unedited Dice over the same screening slices."""
    from medseglens_core.interventions.recovery import _Scores
    from medseglens_core.interventions.spec import Edit, Gate, InterventionSpec

    src = _items("adult", 0.5, range(2))
    for item in src:  # the label misses the oedema of slice 1, which screening (0, 2, 4) skips
        item.label = item.label.copy()
        item.label[:, :, 1] = 0
    ev = _Scores(identity_sae(), "SNFH", stride=2)
    closed = Gate(latents=[1], weights=[1.0], threshold=1e9)
    specs = [InterventionSpec(edits=[Edit(latent=1, op="ablate")], gate=closed)]
    assert all(ev.base(i, screen=True) > ev.base(i) for i in src)  # the two bases differ
    assert np.array_equal(ev.changes(src, specs, screen=True), np.zeros((len(src), 1)))
    assert ev.harmless(src, specs, CFG, screen=True).all()


def test_core_guard_refuses_an_edit_that_erases_the_core(cohorts) -> None:
    """ET latent ablated: the core is gone (refused); oedema latent ablated: the core is kept."""
    from medseglens_core.interventions.recovery import _keeps_core, _Scores
    from medseglens_core.interventions.spec import Edit, InterventionSpec

    _, tgt = cohorts
    ev = _Scores(identity_sae(), "SNFH", stride=1)
    specs = [InterventionSpec(edits=[Edit(latent=j, op="ablate")]) for j in (2, 1)] + [InterventionSpec()]
    assert _keeps_core(ev, tgt[:2], specs, CFG).tolist() == [False, True, True]


def test_core_change_bound_on_a_hand_made_case() -> None:
    """Mean less n standard errors: (0, -0.04) has mean -0.02, sd 0.0283, se 0.02 -> -0.04."""
    from medseglens_core.interventions.baselines import core_change_bound

    # (2 specs, 2 cases, TC/ET)
    change = np.array([[[0.0, 0.01], [-0.04, 0.01]], [[-0.01, 0.0], [-0.01, 0.0]]])
    assert np.allclose(core_change_bound(change, 0.0), [[-0.02, 0.01], [-0.01, 0.0]])
    assert np.allclose(core_change_bound(change, 1.0), [[-0.04, 0.01], [-0.01, 0.0]])
    assert np.allclose(core_change_bound(change[:, :1], 1.0), change[:, 0])  # one case: the mean
    assert core_change_bound(change[:, :0], 1.0).shape == (2, 2)


def test_core_guard_counts_the_spread_over_calibration_cases(cohorts, monkeypatch) -> None:
    """A spec whose mean TC change sits inside the tolerance but varies across cases passes the
    mean-only guard and is refused by the standard-error guard."""
    from medseglens_core.interventions import recovery
    from medseglens_core.interventions.spec import Edit, InterventionSpec

    _, tgt = cohorts
    items = tgt[:2]
    drops = {items[0].case_id: 0.0, items[1].case_id: -0.035}  # mean -0.0175, se 0.0175
    real, calls = recovery.case_scores, {}

    def scored(item, labels, region):  # per case: the unedited scores first, then the edit's
        out = dict(real(item, labels, region))
        calls[item.case_id] = calls.get(item.case_id, 0) + 1
        out["TC"] += drops[item.case_id] if calls[item.case_id] % 2 == 0 else 0.0
        return out

    monkeypatch.setattr(recovery, "case_scores", scored)
    ev = recovery._Scores(identity_sae(), "SNFH", stride=1)
    spec = [InterventionSpec(edits=[Edit(latent=1, op="scale", value=1.0)])]  # labels unchanged
    mean_only = RecoveryConfig(**{**CFG.__dict__, "core_guard_se": 0.0})
    assert recovery._keeps_core(ev, items, spec, mean_only).tolist() == [True]
    assert recovery._keeps_core(ev, items, spec, CFG).tolist() == [False]


def test_blind_refuses_specs_that_cost_the_core(cohorts) -> None:
    src, tgt = cohorts
    strict = RecoveryConfig(**{**CFG.__dict__, "core_tolerance": -1.0})  # nothing can pass
    doc = run_recovery(
        identity_sae(), src, tgt, "blind", model_id="m", source="adult", target="ssa", config=strict
    )
    assert doc["spec"]["edits"] == [] and doc["recovered_fraction"] == 0.0
    sel = doc["selection"]
    assert (
        sel["harmless_at_screen"] >= 1 and sel["keep_core_at_screen"] == 0 and "core guard" in sel["reason"]
    )

    assert "No spec chosen:" in render_recovery_html([doc]) and "core guard" in render_recovery_html([doc])


def test_the_core_guard_stops_once_enough_candidates_keep_the_core(cohorts) -> None:
    """Full-volume checks down the ranking, ``want`` at a time, only until ``want`` pass."""
    from medseglens_core.interventions.recovery import _first_keeping_core, _Scores
    from medseglens_core.interventions.spec import Edit, InterventionSpec

    _, tgt = cohorts
    ev = _Scores(identity_sae(), "SNFH", stride=1)
    keep, erase = InterventionSpec(), InterventionSpec(edits=[Edit(latent=2, op="ablate")])
    assert _first_keeping_core(ev, tgt[:2], [keep] * 20, CFG, 6) == ([0, 1, 2, 3, 4, 5], 6)
    mixed = [erase, keep] * 10  # every other one erases the core: two rounds of 6
    assert _first_keeping_core(ev, tgt[:2], mixed, CFG, 6) == ([1, 3, 5, 7, 9, 11], 12)
    assert _first_keeping_core(ev, tgt[:2], [erase] * 3, CFG, 6) == ([], 3)


def test_blind_confirms_a_core_keeping_candidate_ranked_below_the_cut(cohorts) -> None:
    """Seven candidates restore the oedema and erase the core (ET latent ablated); one, listed
    last and tied on the oedema, keeps the core. The core guard runs before the cut to the best
    ``2 x confirm_top`` at screening, so the core-keeping one is still confirmed and chosen."""
    from medseglens_core.interventions.recovery import _blind, _Scores
    from medseglens_core.interventions.spec import Edit, InterventionSpec

    src, tgt = cohorts
    cfg = RecoveryConfig(**{**CFG.__dict__, "steer_blind": False})
    ev = _Scores(identity_sae(), "SNFH", stride=1)
    restore = [Edit(latent=1, op="scale", value=f) for f in (5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0)]
    bad = [
        (f"erase-core {e.value}", InterventionSpec(edits=[e, Edit(latent=2, op="ablate")])) for e in restore
    ]
    good = ("keep-core", InterventionSpec(edits=[restore[0]]))
    assert len(bad) > 2 * cfg.confirm_top
    name, spec, record = _blind(ev, [*bad, good], tgt[:2], src, None, cfg, None)
    assert name == "keep-core" and spec == good[1]
    assert record["harmless_at_screen"] == 8 and record["keep_core_at_screen"] == 1
    assert record["core_checked_at_screen"] == 8  # down the whole ranking to find it
    assert record["confirmed"] == 1 and record["reason"] is None
