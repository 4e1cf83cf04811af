"""Activation shards: provenance round trip, streaming covers each token once per epoch."""

from __future__ import annotations

import numpy as np
import pytest

from medseglens_core.sae.errors import NoActivations
from medseglens_core.sae.shards import ActivationShards, ShardWriter


def _write(tmp_path, n_cases=3, per=1000):
    w = ShardWriter(tmp_path / "a", 4, shard_tokens=700, meta={"hook": "stage3"})
    for c in range(n_cases):
        idx = w.add_case(f"case{c}", "adult" if c else "ssa")
        tok = np.arange(per * 4, dtype=np.float32).reshape(per, 4) + 10_000 * c
        w.add(tok, case=idx, z=np.arange(per) % 7, y=3, x=np.arange(per) % 5, label=np.arange(per) % 4)
    return w.close()


def test_shards_round_trip_with_provenance(tmp_path):
    sh = _write(tmp_path)
    again = ActivationShards.open(tmp_path / "a")
    assert again.n_tokens == 3000 and [s["n_tokens"] for s in again.shards] == [700, 700, 700, 700, 200]
    assert [c["n_tokens"] for c in again.cases] == [1000, 1000, 1000] and again.cases[0]["cohort"] == "ssa"
    assert again.meta == {"hook": "stage3"} and again.dtype == "float16"
    tok = np.concatenate([again.tokens(i) for i in range(len(again.shards))]).astype(np.float32)
    prov = {k: np.concatenate([again.provenance(i)[k] for i in range(5)]) for k in ("case", "z", "label")}
    row = 1000 + 123  # case 1, token 123
    assert prov["case"][row] == 1 and prov["z"][row] == 123 % 7 and prov["label"][row] == 123 % 4
    assert tok[row, 0] == np.float16(10_000 + 123 * 4)
    assert sh.n_tokens == 3000


def test_iter_batches_one_epoch_is_a_permutation(tmp_path):
    sh = _write(tmp_path)
    batches = list(sh.iter_batches(100, buffer_tokens=800, seed=1, loop=False))
    firsts = np.concatenate([b[:, 0].numpy() for b in batches])
    assert len(batches) == 30 and all(b.shape == (100, 4) for b in batches)
    every = np.concatenate([sh.tokens(i)[:, 0] for i in range(5)]).astype(np.float32)
    assert sorted(firsts) == sorted(every)
    assert not np.array_equal(firsts, every)  # shuffled


def test_empty_or_missing(tmp_path):
    with pytest.raises(NoActivations):
        ActivationShards.open(tmp_path)
    with pytest.raises(NoActivations):
        ShardWriter(tmp_path / "e", 4).close()
