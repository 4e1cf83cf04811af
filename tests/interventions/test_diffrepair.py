"""Protocol diff on the planted gain shift: the diff names the oedema latent, patching it repairs."""

from __future__ import annotations

import json

import pytest

from medseglens_core.errors import InvalidInput
from medseglens_core.interventions.diffrepair import DiffGrid, diff_latents
from medseglens_core.interventions.recovery import RecoveryConfig, run_recovery
from medseglens_core.interventions.report import render_recovery_html
from medseglens_core.interventions.search import FamilyGrid
from tests.interventions.fakes import identity_sae
from tests.interventions.fakes import planted_items as _items


def _report(tmp_path, rows, sae_id="planted"):
    path = tmp_path / "report.json"
    section = {"sae_id": sae_id, "specific": {"ssa": rows}, "counts": {"ssa": {"reference": "adult"}}}
    path.write_text(json.dumps({"source_cohort": "adult", "models": {"m": section}}))
    return path


def test_patching_the_diff_latent_back_to_the_source_repairs_the_held_out_failures(tmp_path) -> None:
    src, tgt = _items("adult", 0.5, range(4)), _items("ssa", 0.1, range(10, 16))
    diff = diff_latents(_report(tmp_path, [{"latent": 1, "direction": "down"}]), "m", "planted", "ssa")
    assert diff.latents == [1] and diff.reference == "adult"
    cfg = RecoveryConfig(calib_n=2, n_candidates=2, dilation=6, grid=FamilyGrid(sizes=(2,)), gate=False)
    doc = run_recovery(identity_sae(), src, tgt, "diff", model_id="m", source="adult", target="ssa",
                       config=cfg, diff=diff)  # fmt: skip
    assert doc["n_failures"] == 4 and doc["recovered_fraction"] == 1.0
    assert doc["diff_latents"]["latents"] == [1] and doc["diff_latents"]["used"] == [1]
    assert doc["source_dice_change"] >= -0.004
    assert {e["latent"] for e in doc["spec"]["edits"]} == {1}
    assert "verdict" in doc and len(doc["baselines"]) == 4


def test_a_diff_naming_no_latent_edits_nothing_without_the_calibration_diff(tmp_path) -> None:
    src, tgt = _items("adult", 0.5, range(4)), _items("ssa", 0.1, range(10, 16))
    diff = diff_latents(_report(tmp_path, []), "m", "planted", "ssa")
    cfg = RecoveryConfig(calib_n=2, n_candidates=2, dilation=6, gate=False, baselines=False,
                         diff_grid=DiffGrid(effect_sizes=()))  # fmt: skip
    doc = run_recovery(identity_sae(), src, tgt, "diff", model_id="m", source="adult", target="ssa",
                       config=cfg, diff=diff)  # fmt: skip
    assert doc["spec"]["edits"] == [] and doc["recovered_fraction"] == 0.0
    assert doc["diff_latents"]["effect"] == []


def test_the_calibration_diff_finds_the_bottleneck_a_report_missed(tmp_path) -> None:
    # the report names latent 3 (silent everywhere: editing it changes nothing); the oedema
    # latent 1 is what the target lost and what the SNFH prediction relies on
    src, tgt = _items("adult", 0.5, range(4)), _items("ssa", 0.1, range(10, 16))
    diff = diff_latents(_report(tmp_path, [{"latent": 3, "direction": "down"}]), "m", "planted", "ssa")
    cfg = RecoveryConfig(calib_n=2, n_candidates=2, dilation=6, gate=False, baselines=False)
    doc = run_recovery(identity_sae(), src, tgt, "diff", model_id="m", source="adult", target="ssa",
                       config=cfg, diff=diff)  # fmt: skip
    # latent 2 (the ET core) ranks too: on the failing target the predicted neighbourhood
    # shrinks to the core, where latent 2 is denser, and it suppresses SNFH (negative attribution)
    effect = {r["latent"]: r for r in doc["diff_latents"]["effect"]}
    assert sorted(effect) == [1, 2] and not any(r["in_report"] for r in effect.values())
    assert effect[1]["effect"] > 0
    assert 1 in doc["diff_latents"]["used"] and "effect" in doc["chosen_family"]
    assert doc["n_failures"] == 4 and doc["recovered_fraction"] == 1.0
    page = render_recovery_html([doc])
    assert "1 ssa-specific latents" in page and "#1 (" in page and "Edited: #1" in page
    off = RecoveryConfig(calib_n=2, n_candidates=2, dilation=6, gate=False, baselines=False,
                         diff_grid=DiffGrid(effect_sizes=()))  # fmt: skip
    only_report = run_recovery(identity_sae(), src, tgt, "diff", model_id="m", source="adult", target="ssa",
                               config=off, diff=diff)  # fmt: skip
    assert only_report["recovered_fraction"] == 0.0


def test_the_label_free_diff_protocol_repairs_without_a_target_label(tmp_path) -> None:
    """diff-unlabelled: the calibration target cases carry no label; the candidates are the diff
    protocol's (report + calibration diff), chosen by matching the source's SNFH/TC volume ratio."""
    from dataclasses import replace

    src, tgt = _items("adult", 0.5, range(4)), _items("ssa", 0.1, range(10, 16))
    tgt = [replace(i, label=None) if k < 2 else i for k, i in enumerate(tgt)]  # calibration: unlabelled
    diff = diff_latents(_report(tmp_path, [{"latent": 3, "direction": "down"}]), "m", "planted", "ssa")
    cfg = RecoveryConfig(calib_n=2, n_candidates=2, dilation=6, gate=False)
    doc = run_recovery(identity_sae(), src, tgt, "diff-unlabelled", model_id="m", source="adult",
                       target="ssa", config=cfg, diff=diff)  # fmt: skip
    assert doc["protocol"] == "diff-unlabelled" and doc["chosen_family"].startswith("diff-")
    assert 1 in doc["diff_latents"]["used"] and doc["selection"]["reason"] is None
    assert doc["n_failures"] == 4 and doc["recovered_fraction"] == 1.0
    assert doc["source_dice_change"] >= -0.004
    assert len(doc["baselines"]) == 4  # chosen by the label-free rule: the calibration has no label
    with pytest.raises(InvalidInput, match="needs labelled target cases"):
        run_recovery(identity_sae(), src, tgt, "diff", model_id="m", source="adult", target="ssa",
                     config=cfg, diff=diff)  # fmt: skip
    with pytest.raises(InvalidInput, match="protocol diff-unlabelled needs a diff report"):
        run_recovery(identity_sae(), src, tgt, "diff-unlabelled", model_id="m", source="adult", target="ssa")


def test_effect_ranking_is_attribution_times_the_relative_deficit() -> None:
    import numpy as np

    from medseglens_core.interventions.diffrepair import effect_ranking

    attribution = np.array([2.0, 1.0, -1.0, 3.0, 5.0])
    source = np.array([1.0, 1.0, 1.0, 1.0, 0.0])
    target = np.array([0.5, 0.0, 3.0, 1.5, 1.0])
    # 2*(1-0.5)=1, 1*(1-0)=1, -1*(1-3)=2 (an excess suppressor), 3*(1-1.5)<0, silent source: none
    assert effect_ranking(attribution, source, target) == [(2, 2.0), (0, 1.0), (1, 1.0)]


def test_diff_needs_a_report_and_a_target_with_failures(tmp_path) -> None:
    src, tgt = _items("adult", 0.5, range(4)), _items("ssa", 0.1, range(10, 16))
    with pytest.raises(InvalidInput, match="needs a diff report"):
        run_recovery(identity_sae(), src, tgt, "diff", model_id="m", source="adult", target="ssa")
    healthy = _items("clinic", 0.5, range(20, 26))  # no shift: nothing fails
    with pytest.raises(InvalidInput, match="no failures"):
        run_recovery(identity_sae(), src, healthy, "oracle", model_id="m", source="adult", target="clinic")
    with pytest.raises(InvalidInput, match="not a diff report"):
        (tmp_path / "bad.json").write_text("[1, 2]")
        diff_latents(tmp_path / "bad.json", "m", "planted", "ssa")
    with pytest.raises(InvalidInput, match="has no model 'other'"):
        diff_latents(_report(tmp_path, []), "other", "planted", "ssa")


def test_a_diff_naming_hundreds_of_latents_gives_specs_within_the_edit_limit() -> None:
    import numpy as np

    from medseglens_core.interventions.diffrepair import DiffLatents, diff_families

    n = 400
    diff = DiffLatents(list(range(n)), dict.fromkeys(range(n), "down"), "r", "s", "ssa", "adult")
    ones = np.ones(n)
    fams = diff_families(diff, np.arange(n, dtype=float), ones, 2 * ones, ones)
    assert fams and all(len(s.edits) <= 64 for _, s in fams)
    assert {e.latent for e in fams[0][1].edits} == set(range(n - 64, n))  # the top by attribution


def test_the_latents_specific_on_the_oedema_tokens_get_their_own_candidate_specs(tmp_path) -> None:
    import numpy as np

    from medseglens_core.interventions.diffrepair import diff_families

    rows = [{"latent": j, "direction": "up", "families": {"brain": "up"}} for j in range(6)]
    rows[2]["families"] = {"brain": "up", "SNFH": "down"}
    rows[4]["families"] = {"SNFH": "down"}
    rows[5]["families"] = {"SNFH": "up"}
    diff = diff_latents(_report(tmp_path, rows), "m", "planted", "ssa")
    assert diff.in_region("SNFH") == [2, 4, 5] and diff.in_region("SNFH", "down") == [2, 4]
    assert diff.to_json()["families"]["4"] == {"SNFH": "down"}
    ones = np.ones(6)
    attribution = np.array([0.0, 0.1, 0.2, 0.3, 0.9, 0.5])
    fams = dict(diff_families(diff, attribution, ones, 2 * ones, ones))
    # ordered by attribution, the region subset edits exactly the region's latents
    assert [e.latent for e in fams["diff-patch TC+4 SNFH b=4.0"].edits] == [4, 5, 2]
    assert [e.latent for e in fams["diff-add TC+2 SNFH-down a=1.0"].edits] == [4, 2]
    # a report from before the region contrasts has no families: no region subset
    old = diff_latents(_report(tmp_path, [{"latent": 1, "direction": "down"}]), "m", "planted", "ssa")
    assert not any(
        "SNFH" in name for name, _ in diff_families(old, np.ones(2), np.ones(2), np.ones(2), np.ones(2))
    )
