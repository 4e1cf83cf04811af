"""`medseglens recover` end to end on the tiny zoo: the document it writes and its refusals."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from tests.analysis.tinyzoo import build_tiny_zoo

KEYS = ("protocol", "model_id", "target", "n_cases", "n_failures", "recovered_fraction", "region",
        "dice_before", "dice_after", "source_dice_change")  # fmt: skip


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    zoo, data = build_tiny_zoo(tmp_path_factory.mktemp("recover"))
    # a cohort name that is no preset: users bring their own populations
    shutil.copytree(data / "ssa", data / "clinic-b")
    return zoo, data


def _run(*args: str):
    from service.cli import _register, app

    _register()
    return CliRunner().invoke(app, ["recover", *args])


@pytest.mark.slow
def test_oracle_writes_recovery_json_and_html(tiny, tmp_path) -> None:
    zoo, data = tiny
    out = tmp_path / "out"
    res = _run("--zoo", str(zoo), "--data", str(data), "--model", "unet-tiny", "--target", "clinic-b",
               "--protocol", "oracle", "--out", str(out))  # fmt: skip
    assert res.exit_code == 0, res.output
    doc = json.loads((out / "recovery.json").read_text())
    assert all(k in doc for k in KEYS)
    assert doc["protocol"] == "oracle" and doc["target"] == "clinic-b" and doc["n_cases"] == 3
    assert doc["region"] == "SNFH" and 0 <= doc["n_failures"] <= 3
    assert 0.0 <= doc["recovered_fraction"] <= 1.0 and doc["dice_after"] >= doc["dice_before"]
    assert (out / "recovery.html").read_text().count("<table") >= 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--target", "nowhere", "--protocol", "oracle"), "cohort folder 'nowhere' is missing"),
        (("--target", "adult", "--protocol", "oracle"), "is the model's training cohort"),
        (("--target", "ssa", "--protocol", "blind"), "needs more than 5 target cases"),
        (("--target", "ssa", "--protocol", "psychic"), "unknown protocol"),
    ],
)
def test_bad_requests_fail_with_one_line(tiny, tmp_path, args, message) -> None:
    """Through the console entry point (``service.cli.main``), as a user runs it."""
    zoo, data = tiny
    cmd = [sys.executable, "-c", "from service.cli import main; main()", "recover", "--zoo", str(zoo),
           "--data", str(data), "--model", "unet-tiny", "--out", str(tmp_path / "o"), *args]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr
    assert not (tmp_path / "o" / "recovery.json").exists()


def _report(tmp_path, tiny, **section) -> str:
    """The tiny zoo's U-Net section of a diff report, with ``section`` overriding its fields."""
    zoo, _ = tiny
    card = json.loads(
        next(p for p in (zoo / "saes").glob("*/card.json") if "unet" in p.parent.name).read_text()
    )
    base = {
        "sae_id": card["id"],
        "specific": {"clinic-b": [{"latent": 0, "direction": "down"}]},
        "counts": {},
    }
    path = tmp_path / "report.json"
    path.write_text(json.dumps({"source_cohort": "adult", "models": {"unet-tiny": {**base, **section}}}))
    return str(path)


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"sae_id": "someone-elses-sae"}, "computed with SAE 'someone-elses-sae'"),
        ({"specific": {"healthy": []}}, "has no cohort 'clinic-b'"),
        ({"provenance": {"sae_sha256": "0" * 64}}, "from another training"),
    ],
)
def test_a_diff_report_that_does_not_fit_is_refused_before_anything_runs(
    tiny, tmp_path, section, message
) -> None:
    zoo, data = tiny
    out = tmp_path / "o"
    res = _run("--zoo", str(zoo), "--data", str(data), "--model", "unet-tiny", "--target", "clinic-b",
               "--protocol", "diff", "--diff-report", _report(tmp_path, tiny, **section), "--out", str(out))  # fmt: skip
    assert res.exit_code != 0 and message in str(res.exception or res.output), res.output
    assert not out.exists()


def test_a_missing_diff_report_is_named(tiny, tmp_path) -> None:
    zoo, data = tiny
    res = _run("--zoo", str(zoo), "--data", str(data), "--model", "unet-tiny", "--target", "clinic-b",
               "--protocol", "diff", "--diff-report", str(tmp_path / "nope.json"), "--out", str(tmp_path / "o"))  # fmt: skip
    assert res.exit_code != 0 and "no diff report at" in str(res.exception or res.output)
