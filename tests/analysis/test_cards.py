"""Latent cards from activation shards with planted provenance."""

from __future__ import annotations

import json

import numpy as np
import pytest

from medseglens_core.analysis.cards import cards_from_shards, cards_from_stats, write_cards
from medseglens_core.sae.shards import ShardWriter
from tests.analysis.planted import TinySAE


def test_cards_from_shards_per_case_rates_regions_and_examples(tmp_path):
    w = ShardWriter(tmp_path / "acts", 4, shard_tokens=7, dtype="float32")
    rng = np.random.default_rng(0)
    for cohort in ("adult", "ssa"):
        for i in range(2):
            c = w.add_case(f"{cohort}{i}", cohort)
            tok = np.zeros((10, 4), dtype=np.float32)
            tok[:, 0] = rng.uniform(0.1, 1.0, 10)  # latent 0 fires everywhere, both cohorts
            tok[:, 3] = -1.0
            lab = np.zeros(10, dtype=np.uint8)
            if cohort == "ssa":
                n_on = 2 + 2 * i  # case ssa0: 2/10 tokens, ssa1: 4/10 tokens
                tok[:n_on, 3] = 1.0 + i
                lab[:n_on] = 2
            w.add(tok, case=c, z=np.full(10, 5 + i), y=np.arange(10), x=np.zeros(10), label=lab)
    cards = cards_from_shards(TinySAE(), w.close(), n_examples=3)
    assert len(cards) == 8
    c3 = cards[3]
    assert c3["firing_rate"] == {"adult": 0.0, "ssa": pytest.approx(0.3)}  # mean of 0.2 and 0.4, per case
    assert c3["mean_activation"]["ssa"] == pytest.approx((0.2 * 1.0 + 0.4 * 2.0) / 2)
    assert c3["region"]["SNFH"] == pytest.approx(1.0)
    ex = c3["top_examples"]
    assert len(ex) == 3 and all(e["case_id"] == "ssa1" and e["value"] == pytest.approx(2.0) for e in ex)
    assert {e["y"] for e in ex} <= {0, 1, 2, 3} and ex[0]["z"] == 6
    assert cards[0]["firing_rate"] == {"adult": 1.0, "ssa": 1.0}
    assert cards[0]["region"]["healthy"] > 0.5
    path = write_cards(cards, tmp_path / "cards")
    assert json.loads(path.read_text())[3]["latent"] == 3


def test_cards_from_stats_without_examples():
    from tests.analysis.test_diff import _planted_stats

    cards = cards_from_stats(_planted_stats(regions=()))
    assert cards[3]["firing_rate"]["adult"] == 0.0 and cards[3]["firing_rate"]["ssa"] == pytest.approx(0.25)
    assert cards[3]["top_examples"] == []
