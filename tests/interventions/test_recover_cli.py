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
