"""`zoo results`: the tables are the cards' and reports' numbers, in JSON and Markdown."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from medseglens_core.analysis.results import results_markdown, zoo_results
from medseglens_core.errors import NotFound

UNET_DICE = {
    "adult": {"WT_dice": 0.9496, "TC_dice": 0.9648, "ET_dice": 0.9, "NCR_label_dice": 0.9603,
              "SNFH_label_dice": 0.906, "WT_hd95": 2.5413, "TC_hd95": 2.0, "ET_hd95": 1.7, "n_cases": 10},
    "healthy": {"false_positive_WT_ml": 0.2632, "n_cases": 10},
    "ssa": {"WT_dice": 0.524, "TC_dice": 0.8358, "ET_dice": 0.5851, "NCR_label_dice": 0.8723,
            "SNFH_label_dice": 0.3121, "WT_hd95": 41.8485, "TC_hd95": 5.3, "ET_hd95": 7.1, "n_cases": 9},
}  # fmt: skip


def _write(path, doc):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))


@pytest.fixture
def zoo(tmp_path):
    z = tmp_path / "zoo"
    _write(
        z / "models" / "unet-adult" / "card.json",
        {"id": "unet-adult", "architecture": "unet", "test_dice": UNET_DICE},
    )
    sae = {"id": "unet-adult-dec1-batchtopk", "model_id": "unet-adult", "hook": "dec1", "d_in": 64, "d_sae": 256,
           "weights_sha256": "ab" * 32,
           "metrics": {"explained_variance": 0.9351, "dead_fraction": 0.0039, "train_tokens": 7999488,
                       "eval_on": "held_out", "fidelity": {"splice_vs_original": {"WT": 0.9937}}}}  # fmt: skip
    _write(z / "saes" / sae["id"] / "card.json", sae)
    gate = {
        **sae,
        "id": "unet-adult-enc2-batchtopk",
        "hook": "enc2",
        "role": "gate",
        "d_in": 32,
        "d_sae": 128,
    }
    _write(z / "saes" / gate["id"] / "card.json", gate)
    counts = {
        "adult": {"reference": ["healthy", "ssa"], "shared": 200, "specific": 5, "specific_up": 3, "specific_down": 2},
        "healthy": {"reference": "adult", "shared": 190, "specific": 9, "specific_up": 1, "specific_down": 8},
        "ssa": {"reference": "adult", "shared": 201, "specific": 4, "specific_up": 4, "specific_down": 0},
    }  # fmt: skip
    report = {"source_cohort": "adult", "models": {"unet-adult": {"sae_id": sae["id"], "hook": "dec1", "counts": counts}},
              "crossarch": [{"model_a": "a", "model_b": "b", "pairs": [{}] * 128, "n_significant": 91,
                             "shared_fraction": 0.7109, "null_max": 0.1}]}  # fmt: skip
    _write(z / "reports" / "zoo" / "report.json", report)
    rec = {"protocols": [{"model_id": "unet-adult", "protocol": "blind", "target": "ssa", "n_cases": 11,
                          "n_failures": 10, "recovered_fraction": 0.9, "dice_before": 0.26, "dice_after": 0.58,
                          "source_dice_change": 0.0, "side_effects": {"TC": 0.021, "ET": -0.004},
                          "verdict": {"best_baseline": "morph_ring", "best_baseline_recovered_fraction": 0.8,
                                      "beats_best_baseline": True}}]}  # fmt: skip
    _write(z / "recovery" / "ssa" / "recovery.json", rec)
    _write(z / "zoo.json", {"package_version": "9.9", "config": {"seed": 0}, "source_commit": "c" * 40})
    return z


def test_json_carries_the_cards_numbers(zoo):
    doc = zoo_results(zoo)
    adult = next(r for r in doc["dice"] if r["cohort"] == "adult")
    assert (
        adult["WT"] == 0.9496
        and adult["SNFH"] == 0.906
        and adult["NCR"] == 0.9603
        and adult["WT_hd95"] == 2.5413
    )
    healthy = next(r for r in doc["dice"] if r["cohort"] == "healthy")
    assert healthy["false_positive_WT_ml"] == 0.2632 and "WT" not in healthy
    assert [r["cohort"] for r in doc["dice"]] == ["adult", "healthy", "ssa"]
    steer = next(r for r in doc["saes"] if r["role"] == "steering")
    assert (
        steer["explained_variance"] == 0.9351 and steer["splice_WT_dice"] == 0.9937 and steer["d_sae"] == 256
    )
    assert {r["role"] for r in doc["saes"]} == {"steering", "gate"}
    diff = doc["diff"][0]["specific"]
    assert (
        diff["healthy"]["up"] == 1
        and diff["healthy"]["down"] == 8
        and diff["ssa"] == {"up": 4, "down": 0, "reference": "adult"}
    )
    assert doc["crossarch"][0]["pairs"] == 128 and doc["crossarch"][0]["n_significant"] == 91
    assert (
        doc["recovery"][0]["recovered_fraction"] == 0.9
        and doc["recovery"][0]["file"] == "recovery/ssa/recovery.json"
    )
    assert doc["zoo"]["source_commit"] == "c" * 40 and len(doc["zoo"]["config_sha256"]) == 64
    assert json.loads(json.dumps(doc)) == doc


def test_markdown_tables_match_the_cards(zoo):
    md = results_markdown(zoo_results(zoo))
    assert "| unet-adult | adult | 0.95 | 0.96 | 0.90 | 0.96 | 0.91 | 2.5 | 10 |" in md
    assert "| unet-adult | ssa | 0.52 | 0.84 | 0.59 | 0.87 | 0.31 | 41.8 | 9 |" in md
    assert "false-positive tumour 0.26 mL per scan" in md
    assert "| unet-adult-dec1-batchtopk | 64 -> 256 | 0.935 | 0.4% | 0.994 | 7,999,488 | abababababab |" in md
    assert "| unet-adult-enc2-batchtopk (gate) | 32 -> 128 |" in md
    assert "| model | healthy | ssa | adult vs the rest |" in md
    assert "| unet-adult (dec1) | 1 / 8 | 4 / 0 | 3 / 2 |" in md
    assert "71% of the 128 most active latent pairs" in md and "(91 pairs)" in md
    assert (
        "| unet-adult | blind | ssa | ssa | 10 of 11 | 90% | 0.26 -> 0.58 | 0.000 | +0.021 / -0.004 | morph_ring 80% (latent beats it) |"
        in md
    )
    assert "commit " + "c" * 40 in md


def test_cli_prints_both_formats_and_refuses_bad_input(zoo, tmp_path):
    from service.cli import _register, app

    _register()
    runner = CliRunner()
    res = runner.invoke(app, ["zoo", "results", "--zoo", str(zoo), "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == zoo_results(zoo)
    res = runner.invoke(app, ["zoo", "results", "--zoo", str(zoo)])
    assert res.exit_code == 0 and res.output == results_markdown(zoo_results(zoo))
    extra = tmp_path / "elsewhere.json"
    extra.write_text(json.dumps({"model_id": "m", "protocol": "oracle", "n_cases": 4, "n_failures": 2}))
    res = runner.invoke(
        app, ["zoo", "results", "--zoo", str(zoo), "--format", "json", "--recovery", str(extra)]
    )
    assert [r["protocol"] for r in json.loads(res.output)["recovery"]] == ["blind", "oracle"]
    assert runner.invoke(app, ["zoo", "results", "--zoo", str(zoo), "--format", "xml"]).exit_code == 2
    res = runner.invoke(app, ["zoo", "results", "--zoo", str(tmp_path / "none")])
    assert isinstance(res.exception, NotFound) and "zoo build" in str(res.exception)  # main() prints one line
    with pytest.raises(NotFound):
        zoo_results(zoo, recovery=[tmp_path / "missing.json"])


def _suite(path):
    """A suite.json as recover-suite writes it: rows per (shift, model, protocol), the real summary."""
    from medseglens_core.interventions.suite import summarise

    common = {"model_id": "unet-adult"}

    def latent(shift, protocol, n, rf, before, after, tc=0.0, et=0.0):
        return {**common, "shift": shift, "protocol": protocol, "kind": "latent", "n_failures": n,
                "recovered_fraction": rf, "dice_before": before, "dice_after": after, "source_dice_change": 0.0,
                "side_effects": {"TC": tc, "ET": et}, "design_shift": shift == "modality_swap"}  # fmt: skip

    def baseline(shift, name, n, rf, before, after):
        return {**latent(shift, f"{name} (blind rule)", n, rf, before, after), "kind": "baseline"}

    rows = [
        latent("rician_noise", "oracle", 7, 1.0, 0.42, 0.63),
        latent("rician_noise", "blind", 5, 0.8, 0.41, 0.60, tc=0.118, et=0.079),
        latent("rician_noise", "diff", 5, 0.0, 0.41, 0.41),
        baseline("rician_noise", "morph_ring", 5, 0.4, 0.41, 0.50),
        baseline("rician_noise", "logit_bias_core", 5, 0.6, 0.41, 0.55),
        latent("modality_swap", "blind", 6, 0.0, 0.17, 0.24, tc=-0.024, et=0.015),
        baseline("modality_swap", "morph_ring", 6, 0.0, 0.17, 0.27),
        *[{**common, "shift": "gain_offset", "protocol": p, "kind": "latent", "n_failures": 0,
           "recovered_fraction": None} for p in ("oracle", "blind", "diff")],
    ]  # fmt: skip
    kinds = ["rician_noise", "modality_swap", "gain_offset"]
    doc = {"config": {"seed": 9400, "n_target": 12}, "design_shifts": {"modality_swap": "control"},
           "rows": rows, "summary": summarise(rows, kinds)}  # fmt: skip
    _write(path, doc)
    return path


def test_suite_table_reads_each_protocol_and_the_best_baseline(zoo, tmp_path):
    path = _suite(tmp_path / "s9400" / "suite.json")
    doc = zoo_results(zoo, suite=[path])
    rician = next(r for r in doc["suite"] if r["shift"] == "rician_noise")
    assert rician["best_baseline"]["name"] == "logit_bias_core (blind rule)"
    assert rician["latent_beats_baseline"] is True and rician["protocols"]["blind"]["TC_change"] == 0.118
    md = results_markdown(doc)
    assert (
        "| s9400 (seed 9400) | unet-adult | rician_noise | 7 | 7/7 (0.42 -> 0.63) | 4/5 (0.41 -> 0.60) "
        "| 0/5 (0.41 -> 0.41) | logit_bias_core 3/5 (0.41 -> 0.55) | +0.118 / +0.079 |" in md
    )
    assert (
        "| s9400 (seed 9400) | unet-adult | modality_swap * | 6 | not run | 0/6 (0.17 -> 0.24) | not run "
        in md
    )
    assert "- s9400 unet-adult: no evaluated case fails (SNFH >= 0.5) under gain_offset" in md
    assert "Leave-one-shift-out" not in results_markdown(zoo_results(zoo))  # no suite given: no table
    from service.cli import _register, app

    _register()
    res = CliRunner().invoke(app, ["zoo", "results", "--zoo", str(zoo), "--suite", str(path)])
    assert res.exit_code == 0 and res.output == md
    with pytest.raises(NotFound, match="recover-suite"):
        zoo_results(zoo, suite=[tmp_path / "none.json"])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"rows": "x"}))
    with pytest.raises(NotFound, match="not a suite.json"):
        zoo_results(zoo, suite=[bad])
    bad.write_text(json.dumps({"rows": [], "summary": {"unet-adult": {}}}))
    with pytest.raises(NotFound, match="not a suite.json"):
        zoo_results(zoo, suite=[bad])
    bad.write_text("{not json")  # named as a suite file, not as an artefact of the zoo
    with pytest.raises(NotFound, match=r"cannot read bad.json \(.*\); pass a suite.json") as err:
        zoo_results(zoo, suite=[bad])
    assert "of the zoo" not in str(err.value)
