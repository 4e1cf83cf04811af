"""Which source cases the blind protocols check harm on when run from a zoo."""

from __future__ import annotations

import numpy as np

from medseglens_core.interventions.pipeline import harm_case_paths
from medseglens_core.interventions.recovery import RecoveryConfig
from tests.analysis.tinyzoo import write_case


def _split(zoo, split: str, n: int, rng) -> list[str]:
    ids = [f"A-{split}-{i:03d}" for i in range(n)]
    for cid in ids:
        write_case(zoo / "data" / split / "adult" / cid, cid, rng, 1.0)
    return ids


def test_zoo_harm_set_is_val_then_test_capped(tmp_path) -> None:
    rng = np.random.default_rng(0)
    val, test = _split(tmp_path, "val", 4, rng), _split(tmp_path, "test", 20, rng)
    got = [p.name for p in harm_case_paths(tmp_path, "adult", set(), None, RecoveryConfig().harm_cases)]
    # the default keeps the 14 cases the protocols were designed on: 4 val + the first 10 test
    assert got == [*val, *test[:10]]
    got = [p.name for p in harm_case_paths(tmp_path, "adult", {val[1], test[0]}, None, 5)]
    assert got == [val[0], val[2], val[3], test[1], test[2]]


def test_a_source_calibration_folder_is_used_whole(tmp_path) -> None:
    rng = np.random.default_rng(1)
    _split(tmp_path, "val", 2, rng)
    own = tmp_path / "mine"
    ids = [f"B-{i:03d}" for i in range(6)]
    for cid in ids:
        write_case(own / cid, cid, rng, 1.0)
    got = [p.name for p in harm_case_paths(tmp_path, "adult", {ids[0]}, own, 3)]
    assert got == ids[1:]


def test_a_zoo_without_held_out_source_cases_gives_none(tmp_path) -> None:
    assert harm_case_paths(tmp_path, "adult", set(), None, 14) == []
