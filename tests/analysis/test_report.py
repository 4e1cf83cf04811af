"""Diff report end to end on a tiny zoo; HTML self-containment; JSON keys as documented."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
from typer.testing import CliRunner

from medseglens_core.analysis.report import REPORT_KEYS, build_diff_report
from medseglens_core.errors import NotFound
from medseglens_core.reports.html import Figure, Section, Table, render_html
from medseglens_core.reports.plots import heatmap_png
from tests.analysis.tinyzoo import build_tiny_zoo


def _assert_self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    for m in re.finditer(r'(?:src|href)\s*=\s*"([^"]*)"', page):
        assert m.group(1).startswith("data:"), m.group(1)
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_html_is_self_contained_and_escaped():
    png = heatmap_png([[0.1, 0.2], [0.3, 0.0]], ["adult", "ssa"], ["0", "1"], "t")
    page = render_html(
        "<b>x</b>", [Section("s", ["<script>bad</script>"], [Table(["a"], [[1.5]])], [Figure(png, "c")])]
    )
    _assert_self_contained(page)
    assert "&lt;script&gt;" in page and "data:image/png;base64," in page


@pytest.mark.slow
def test_diff_report_cli_end_to_end(tmp_path):
    zoo, data = build_tiny_zoo(tmp_path)
    from service.cli import _register, app

    _register()
    out = tmp_path / "report"
    res = CliRunner().invoke(
        app, ["diff", "--zoo", str(zoo), "--data", str(data), "--out", str(out), "--n-perm", "20"]
    )
    assert res.exit_code == 0, res.output
    report = json.loads((out / "report.json").read_text())
    assert set(REPORT_KEYS) <= set(report)
    assert report["source_cohort"] == "adult"
    assert report["cohorts"]["ssa"]["n_cases"] == 3
    assert set(report["models"]) == {"unet-tiny", "segformer-tiny"}
    for m in report["models"].values():
        assert set(m) >= {
            "arch",
            "sae_id",
            "hook",
            "d_sae",
            "n_alive",
            "firing_rate",
            "counts",
            "specific",
            "reliance",
        }
        assert set(m["counts"]) == {"adult", "ssa"}
        c = m["counts"]["ssa"]
        assert c["reference"] == "adult" and c["specific"] == c["specific_up"] + c["specific_down"]
        assert c["shared"] + c["specific"] <= m["d_sae"]
        assert len(m["firing_rate"]["ssa"]) == m["d_sae"]
        assert set(m["reliance"]["SNFH"]) == {"adult", "ssa"}
        # the tiny zoo has no ZOO/data/train: per-cohort OOD says it is not calibrated, counts cases
        assert m["ood"]["calibrated"] is False and "no training cases" in m["ood"]["note"]
        assert {c: v["n_cases"] for c, v in m["ood"]["cohorts"].items()} == {"adult": 3, "ssa": 3}
        weights = zoo / "models" / m["provenance"]["model_id"] / "weights.safetensors"
        assert m["provenance"]["model_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert len(report["crossarch"]) == 1
    x = report["crossarch"][0]
    assert 0.0 <= x["shared_fraction"] <= 1.0 and x["n_perm"] == 20
    _assert_self_contained((out / "report.html").read_text())


def test_missing_zoo_is_a_clear_error(tmp_path):
    with pytest.raises(NotFound, match="not a zoo"):
        build_diff_report(tmp_path / "nope", tmp_path, tmp_path / "out")
