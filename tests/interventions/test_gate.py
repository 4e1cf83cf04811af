"""Population gates: the score's known value, closed = identity, fitting on planted cohorts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medseglens_core.interventions.apply import apply_spec, gate_score
from medseglens_core.interventions.cache import PrefixCache
from medseglens_core.interventions.errors import InvalidSpec, LatentOutOfRange, MissingGateSAE
from medseglens_core.interventions.gate import fit_gate, gate_opens
from medseglens_core.interventions.search import VolumeItem
from medseglens_core.interventions.spec import GATE_EPS, Edit, Gate, InterventionSpec, parse_spec
from medseglens_core.models import build_model
from tests.interventions.fakes import IdentityPrepared, PlantedModel, ReluSAE, identity_sae, planted_volume


def _item(cohort: str, seed: int, marker: float) -> VolumeItem:
    """A planted volume whose channel 3 (latent 3 of the identity SAE) is shifted by ``marker``:
    a negative marker silences latent 3 everywhere, a positive one makes it fire on a fraction
    of the tokens that grows with it (the noise decides the rest)."""
    slices, label = planted_volume(0.5, seed)
    slices[:, 3] += marker
    cache = PrefixCache.build(PlantedModel(), IdentityPrepared(slices, label))
    return VolumeItem(f"{cohort}-{seed:02d}", cohort, cache, label, (1.0, 1.0, 1.0))


def test_gate_score_is_the_weighted_log_firing_rate() -> None:
    item = _item("ssa", 1, 0.0)
    slices = item.cache.prepared.slices
    rate = (F.avg_pool2d(slices, 4) > 0).float().mean(dim=(0, 2, 3)).double()  # per channel
    gate = Gate(latents=[3, 1], weights=[0.5, -2.0], threshold=0.0)
    expected = 0.5 * math.log(rate[3] + GATE_EPS) - 2.0 * math.log(rate[1] + GATE_EPS)
    assert 0.2 < rate[3] < 0.8 and 0.0 < rate[1] < 0.5  # both latents fire somewhere, not everywhere
    assert gate_score(item.cache, identity_sae(), gate) == pytest.approx(expected, rel=1e-9)


def test_gate_rates_count_brain_tokens_only() -> None:
    """With a brain mask on the prepared case, rates are over the cells holding brain."""
    item = _item("ssa", 4, 0.0)
    slices = item.cache.prepared.slices
    brain = np.zeros((16, 16, slices.shape[0]), dtype=bool)
    brain[:8, :, :] = True  # the first two rows of 4x4 cells
    item.cache.prepared.brain_mask = brain
    pooled = F.avg_pool2d(slices, 4)[:, :, :2, :]  # (Z, C, 2, 4): the brain cells
    rate = (pooled > 0).float().mean(dim=(0, 2, 3)).double()
    gate = Gate(latents=[3], weights=[1.0], threshold=0.0)
    assert gate_score(item.cache, identity_sae(), gate) == pytest.approx(math.log(rate[3] + GATE_EPS))


def test_closed_gate_is_the_identity_and_open_gate_changes_nothing_else() -> None:
    item = _item("ssa", 2, 0.0)
    sae = identity_sae()
    edits = [Edit(latent=1, op="scale", value=0.0, scope="all")]
    plain = apply_spec(item.cache, sae, InterventionSpec(edits=edits), label=item.label)
    assert plain.changed_voxels > 0 and plain.gate_score is None
    score = gate_score(item.cache, sae, Gate(latents=[3], weights=[1.0], threshold=0.0))
    closed = apply_spec(
        item.cache,
        sae,
        InterventionSpec(edits=edits, gate=Gate(latents=[3], weights=[1.0], threshold=score + 1e-6)),
        label=item.label,
    )
    assert np.array_equal(closed.edited_labels, item.cache.baseline_labels)
    assert closed.changed_voxels == 0 and closed.changed_tokens == 0 and closed.rerun_slices == 0
    assert closed.gate_open is False and closed.edits[0].tokens_in_scope == 0
    opened = apply_spec(
        item.cache,
        sae,
        InterventionSpec(edits=edits, gate=Gate(latents=[3], weights=[1.0], threshold=score)),
        label=item.label,
    )
    assert opened.gate_open is True and opened.gate_score == pytest.approx(score)
    assert np.array_equal(opened.edited_labels, plain.edited_labels)


def test_gate_rejects_bad_latents_and_mismatched_weights() -> None:
    with pytest.raises(InvalidSpec, match="one weight per latent"):
        parse_spec({"edits": [], "gate": {"latents": [1, 2], "weights": [1.0], "threshold": 0}})
    item = _item("ssa", 3, 0.0)
    spec = InterventionSpec(
        edits=[Edit(latent=1, op="ablate")], gate=Gate(latents=[9], weights=[1.0], threshold=0)
    )
    with pytest.raises(LatentOutOfRange, match="gate latent 9"):
        apply_spec(item.cache, identity_sae(), spec)


def test_fit_gate_finds_the_marker_latent_and_generalises() -> None:
    sae = identity_sae()
    target = [_item("ssa", s, 0.001) for s in range(10, 15)]
    source = [_item("adult", s, -0.05) for s in range(20, 28)]
    fit = fit_gate(sae, target, source, n_latents=2)
    assert fit.gate is not None and fit.margin > 0 and fit.loo_errors == 0
    assert fit.gate.latents[0] == 3 and fit.gate.weights[0] > 0  # fires more in the target
    assert min(fit.target_scores) > fit.gate.threshold > max(fit.source_scores)
    new_target = [_item("ssa", s, 0.001) for s in range(30, 34)]
    new_source = [_item("adult", s, -0.05) for s in range(40, 44)]
    assert gate_opens(new_target, sae, fit.gate) == [True] * 4
    assert gate_opens(new_source, sae, fit.gate) == [False] * 4


def test_fit_gate_gives_none_when_the_cohorts_overlap() -> None:
    sae = identity_sae()
    a = [_item("ssa", s, 0.0) for s in range(50, 54)]
    b = [_item("adult", s, 0.0) for s in range(54, 58)]
    fit = fit_gate(sae, a, b, n_latents=2)
    assert fit.gate is None
    assert gate_opens(a, sae, None) == [True] * 4


def test_gate_at_another_hook_reads_that_hooks_sae() -> None:
    """SegFormer cached at stage3, gate on a stage2 SAE: the score is that SAE's rates."""
    model = build_model("segformer", input_size=32).eval()
    slices = torch.randn(5, 4, 32, 32)
    cache = PrefixCache.build(model, IdentityPrepared(slices), "stage3", batch_size=2)
    steer = ReluSAE.random(cache.channels, 32, seed=1)
    with torch.no_grad():
        h2 = torch.cat([model.run_prefix(slices[i : i + 2], "stage2").h for i in range(0, 5, 2)])
    gate_sae = ReluSAE.random(h2.shape[1], 16, seed=2)
    with torch.no_grad():
        z = gate_sae.encode(h2.permute(0, 2, 3, 1).reshape(-1, h2.shape[1]))
    rate = (z > 0).double().mean(dim=0)
    j = int(torch.argmin((rate - 0.5).abs()))  # a latent that fires on some tokens only
    gate = Gate(hook="stage2", latents=[j], weights=[1.0], threshold=0.0)
    score = gate_score(cache, steer, gate, gate_sae=gate_sae)
    assert score == pytest.approx(math.log(float(rate[j]) + GATE_EPS), rel=1e-6)
    with pytest.raises(MissingGateSAE, match="stage2"):
        gate_score(cache, steer, gate)
    edits = [Edit(latent=0, op="add", value=5.0)]
    closed = Gate(hook="stage2", latents=[j], weights=[1.0], threshold=score + 1e-6)
    res = apply_spec(cache, steer, InterventionSpec(edits=edits, gate=closed), gate_sae=gate_sae)
    assert res.gate_open is False and res.changed_voxels == 0
    assert np.array_equal(res.edited_labels, cache.baseline_labels)
    opened = Gate(hook="stage2", latents=[j], weights=[1.0], threshold=score)
    res = apply_spec(cache, steer, InterventionSpec(edits=edits, gate=opened), gate_sae=gate_sae)
    assert res.gate_open is True and res.changed_tokens > 0


def test_zoo_gate_sae_is_found_by_role_and_never_the_main_sae(tmp_path) -> None:
    from medseglens_core.analysis.zoo import discover_zoo
    from medseglens_core.interventions.zoo import gate_sae_id

    (tmp_path / "models" / "m").mkdir(parents=True)
    (tmp_path / "models" / "m" / "card.json").write_text(json.dumps({"id": "m"}))
    for sid, extra in (("m-a-gate", {"role": "gate"}), ("m-b-main", {})):
        (tmp_path / "saes" / sid).mkdir(parents=True)
        card = {"id": sid, "model_id": "m", "hook": "x", **extra}
        (tmp_path / "saes" / sid / "card.json").write_text(json.dumps(card))
    assert gate_sae_id(tmp_path, "m") == "m-a-gate"
    assert gate_sae_id(tmp_path, "other") is None
    assert [e.sae_id for e in discover_zoo(tmp_path)] == ["m-b-main"]  # "a" sorts first, still not main


def _marked(cohort: str, seed: int, markers: dict[int, float]) -> VolumeItem:
    """A planted volume with channel ``c`` (latent ``c`` of the identity SAE) shifted by ``markers[c]``."""
    slices, label = planted_volume(0.5, seed)
    for c, m in markers.items():
        slices[:, c] += m
    cache = PrefixCache.build(PlantedModel(), IdentityPrepared(slices, label))
    return VolumeItem(f"{cohort}-{seed:02d}", cohort, cache, label, (1.0, 1.0, 1.0))


def test_balanced_accuracy_weighs_each_group_half() -> None:
    from medseglens_core.interventions.gate import balanced_accuracy

    assert balanced_accuracy(0, 3, 0, 16) == 1.0
    assert balanced_accuracy(3, 3, 0, 16) == 0.5  # 16 of 19 scans right, yet no target scan
    assert balanced_accuracy(1, 5, 1, 10) == pytest.approx(0.85)


def test_fit_gate_refuses_a_gate_that_misses_every_left_out_target() -> None:
    """Two target scans marked on DIFFERENT latents (0 and 3; both silent on the source): the fit on
    both separates them, but refitted without one, the gate reads only the other's latent and stays
    closed on the left-out one. 2 errors of 12 scans (83%) passed the old all-scans rule; the
    balanced accuracy is 0.5, so there is no gate."""
    sae = identity_sae()
    target = [_marked("ssa", 60, {0: 0.01, 3: -0.05}), _marked("ssa", 61, {0: -0.05, 3: 0.01})]
    source = [_marked("adult", s, {0: -0.05, 3: -0.05}) for s in range(62, 72)]
    fit = fit_gate(sae, target, source, n_latents=2)
    assert fit.margin > 0  # separated on the calibration scans themselves
    assert fit.loo_target_errors == 2 and fit.loo_errors == 2
    assert fit.gate is None
