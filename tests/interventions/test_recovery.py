"""Recovery on a planted setup: the oedema latent fires 5x weaker in the target cohort."""

from __future__ import annotations

import pytest

from medseglens_core.interventions.cache import PrefixCache
from medseglens_core.interventions.recovery import RecoveryConfig, run_recovery
from medseglens_core.interventions.search import VolumeItem, profile, rank_candidates
from tests.interventions.fakes import IdentityPrepared, PlantedModel, identity_sae, planted_volume

CFG = RecoveryConfig(
    calib_n=2, n_candidates=2, dilation=6, scales=(2.0, 5.0), adds=(1.0,), max_edits_oracle=1
)


def _items(cohort: str, gain: float, seeds: range) -> list[VolumeItem]:
    model = PlantedModel()
    out = []
    for s in seeds:
        slices, label = planted_volume(gain, s)
        cache = PrefixCache.build(model, IdentityPrepared(slices))
        out.append(VolumeItem(f"{cohort}-{s:02d}", cohort, cache, label, (1.0, 1.0, 1.0)))
    return out


@pytest.fixture(scope="module")
def cohorts() -> tuple[list[VolumeItem], list[VolumeItem]]:
    return _items("adult", 0.5, range(3)), _items("ssa", 0.1, range(10, 15))


def test_ranking_puts_the_suppressed_oedema_latent_first(cohorts) -> None:
    src, tgt = cohorts
    sae = identity_sae()
    ps = [profile(i, sae, "SNFH", 6) for i in src]
    pt = [profile(i, sae, "SNFH", 6) for i in tgt]
    assert ps[0].attribution[1] > 0 > ps[0].attribution[2]  # oedema latent helps, ET latent competes
    ranking = rank_candidates(ps, pt, 2)
    assert ranking.latents[0] == 1
    assert ranking.target_mean[0] < 0.5 * ranking.source_mean[0]  # the neighbourhoods differ in size


@pytest.mark.parametrize("protocol", ["oracle", "blind", "blind-unlabelled"])
def test_protocols_recover_the_planted_failures(cohorts, protocol: str) -> None:
    src, tgt = cohorts
    doc = run_recovery(
        identity_sae(), src, tgt, protocol, model_id="m", source="adult", target="ssa", config=CFG
    )
    expected_cases = 5 if protocol == "oracle" else 3
    assert (
        doc["n_cases"] == expected_cases and doc["n_failures"] == expected_cases
    )  # every ssa case misses oedema
    assert doc["dice_before"] == 0.0
    assert doc["recovered_fraction"] == 1.0 and doc["dice_after"] > 0.5
    if protocol == "blind":  # the only protocol that checks harm on the source cohort
        assert doc["source_dice_change"] >= -0.01
    if protocol != "oracle":
        assert doc["calibration"]["target_case_ids"] == ["ssa-10", "ssa-11"]
        assert [e["latent"] for e in doc["spec"]["edits"]] == [1]
