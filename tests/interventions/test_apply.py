"""Splicing edits at the hook: bit-exact identity, localised deltas, a planted causal latent."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medseglens_core.interventions.apply import apply_spec
from medseglens_core.interventions.cache import PrefixCache
from medseglens_core.interventions.errors import LatentOutOfRange, MissingMask, MissingReference
from medseglens_core.interventions.spec import Edit, InterventionSpec
from medseglens_core.models import build_model
from tests.interventions.fakes import IdentityPrepared, PlantedModel, ReluSAE, identity_sae, planted_volume


def _tiny(arch: str):
    model = build_model(arch, input_size=32).eval()
    slices = torch.randn(5, 4, 32, 32)
    cache = PrefixCache.build(model, IdentityPrepared(slices), batch_size=2)
    sae = ReluSAE.random(cache.channels, 64)
    return model, slices, cache, sae


@pytest.mark.parametrize("arch", ["unet", "segformer"])
def test_empty_and_no_op_specs_reproduce_the_prediction_bit_for_bit(arch: str) -> None:
    model, slices, cache, sae = _tiny(arch)
    with torch.no_grad():  # the same slice batches as the cache (conv kernels depend on batch size)
        full = torch.cat([model(slices[i : i + 2]) for i in range(0, 5, 2)])
    assert torch.equal(cache.baseline_logits, full)
    expected = full.argmax(dim=1).permute(1, 2, 0).numpy().astype(np.uint8)
    for spec in (InterventionSpec(), InterventionSpec(edits=[Edit(latent=3, op="scale", value=1.0)])):
        res = apply_spec(cache, sae, spec)
        assert np.array_equal(res.edited_labels, expected)
        assert np.array_equal(res.baseline_labels, expected)
        assert res.changed_tokens == 0 and res.changed_voxels == 0 and res.rerun_slices == 0


@pytest.mark.parametrize("arch", ["unet", "segformer"])
def test_splice_changes_h_only_at_scoped_tokens_by_the_decoder_delta(arch: str, monkeypatch) -> None:
    model, slices, cache, sae = _tiny(arch)
    h, w = cache.hook_shape
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    real = model.run_suffix

    def spy(prefix, hh):
        seen.append((prefix.h.clone(), hh.clone()))
        return real(prefix, hh)

    monkeypatch.setattr(model, "run_suffix", spy)
    # case grid == slice grid (H, W, Z); a box over slice 3 covering hook cell (0, 0) only.
    cell = 32 // h
    spec = InterventionSpec(
        edits=[Edit(latent=5, op="add", value=2.0, scope="box", box=[0, 0, 3, cell, cell, 4])]
    )
    res = apply_spec(cache, sae, spec)
    assert res.rerun_slices == 1 and res.changed_tokens == 1
    ((orig, new),) = seen
    assert orig.shape[0] == 1  # only the edited slice re-ran
    diff = (new != orig).any(dim=1)[0]
    assert diff[0, 0] and int(diff.sum()) == 1
    expected = 2.0 * sae.W_dec[5].detach()  # dec(z + 2 e_5) - dec(z), linear decoder
    torch.testing.assert_close(new[0, :, 0, 0] - orig[0, :, 0, 0], expected, atol=1e-5, rtol=1e-5)
    untouched = [k for k in range(5) if k != 3]
    full_other = res.baseline_labels[..., untouched]
    assert np.array_equal(res.edited_labels[..., untouched], full_other)


def _planted_cache(gain: float = 0.5, seed: int = 0):
    slices, label = planted_volume(gain, seed)
    cache = PrefixCache.build(PlantedModel(), IdentityPrepared(slices))
    return cache, label


def test_planted_latent_drives_oedema_and_ablating_it_removes_the_region() -> None:
    cache, label = _planted_cache()
    sae = identity_sae()
    base = apply_spec(cache, sae, InterventionSpec(), label=label)
    assert base.dice_before["SNFH"] > 0.6 and base.baseline_volume_ml["SNFH"] > 0
    res = apply_spec(cache, sae, InterventionSpec(edits=[Edit(latent=1, op="ablate")]), label=label)
    assert res.edited_volume_ml["SNFH"] == 0.0
    assert res.volume_change_ml["SNFH"] == -base.baseline_volume_ml["SNFH"]
    assert res.dice_after["SNFH"] == 0.0
    et_before = res.baseline_labels == 3
    assert np.all(res.edited_labels[et_before] == 3)  # the ET latent's voxels stay ET
    other = apply_spec(cache, sae, InterventionSpec(edits=[Edit(latent=3, op="ablate")]), label=label)
    assert other.changed_voxels == 0  # latent 3 drives nothing


def test_steering_up_weak_oedema_inside_the_predicted_region_recovers_it() -> None:
    cache, label = _planted_cache(gain=0.1)
    sae = identity_sae()
    base = apply_spec(cache, sae, InterventionSpec(), label=label)
    assert base.dice_before["SNFH"] == 0.0
    spec = InterventionSpec(
        edits=[Edit(latent=1, op="scale", value=5.0, scope="predicted_region", region="WT", dilation=6)]
    )
    res = apply_spec(cache, sae, spec, label=label)
    assert res.dice_after["SNFH"] > 0.6
    assert res.edits[0].tokens_changed > 0 and res.edits[0].mean_after == pytest.approx(
        5 * res.edits[0].mean_before
    )
    patch = InterventionSpec(edits=[Edit(latent=1, op="patch", reference_cohort="adult", scope="active")])
    stats = {"adult": np.array([0.0, 0.5, 0.0, 0.0])}
    res2 = apply_spec(cache, sae, patch, label=label, reference_stats=stats)
    assert res2.edits[0].mean_after == pytest.approx(0.5)  # every active token set to the adult mean
    assert np.all(
        res2.edited_labels[label == 2] == 2
    )  # the whole oedema is found (and more: noise fires too)


def test_a_predicted_region_scope_is_dilated_once_per_cache(monkeypatch) -> None:
    from scipy import ndimage

    from medseglens_core.interventions import apply as apply_mod

    cache, label = _planted_cache(gain=0.1)
    sae = identity_sae()
    where = {"scope": "predicted_region", "region": "TC", "dilation": 4}
    direct = cache.voxels_to_tokens(apply_mod.dilate(apply_mod.region_mask(cache.baseline_labels, "TC"), 4))
    calls = []
    real = ndimage.binary_dilation
    monkeypatch.setattr(ndimage, "binary_dilation", lambda *a, **k: calls.append(1) or real(*a, **k))
    specs = [InterventionSpec(edits=[Edit(latent=j, op="scale", value=f, **where) for j in (1, 2, 3)])
             for f in (2.0, 5.0)]  # fmt: skip
    results = [apply_spec(cache, sae, s, label=label) for s in specs]
    assert len(calls) == 1  # six edits, two specs, one scope: one dilation
    assert np.array_equal(cache.region_tokens("TC", 4), direct)
    assert not cache.region_tokens("TC", 4).flags.writeable
    assert results[1].edits[0].tokens_in_scope == int(direct.sum())
    fresh, _ = _planted_cache(gain=0.1)  # the same edits on a cache without the memo: same labels
    assert np.array_equal(
        apply_spec(fresh, sae, specs[1], label=label).edited_labels, results[1].edited_labels
    )
    assert len(calls) == 2


def test_scope_mask_and_reference_errors() -> None:
    cache, _ = _planted_cache()
    sae = identity_sae()
    with pytest.raises(MissingMask, match="pass a mask"):
        apply_spec(cache, sae, InterventionSpec(edits=[Edit(latent=1, op="ablate", scope="mask")]))
    with pytest.raises(MissingMask, match="case grid"):
        apply_spec(
            cache,
            sae,
            InterventionSpec(edits=[Edit(latent=1, op="ablate", scope="mask")]),
            mask=np.ones((2, 2, 2)),
        )
    with pytest.raises(MissingReference, match="'adult'"):
        apply_spec(cache, sae, InterventionSpec(edits=[Edit(latent=1, op="patch", reference_cohort="adult")]))
    with pytest.raises(LatentOutOfRange, match="4 latents"):
        apply_spec(cache, sae, InterventionSpec(edits=[Edit(latent=9, op="ablate")]))
    # a mask covering nothing changes nothing
    empty = np.zeros(cache.baseline_labels.shape, dtype=bool)
    res = apply_spec(
        cache, sae, InterventionSpec(edits=[Edit(latent=1, op="ablate", scope="mask")]), mask=empty
    )
    assert res.changed_tokens == 0 and res.changed_voxels == 0
