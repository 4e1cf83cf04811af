"""Intervention and latent-card routes on the tiny zoo, checked against the core's own result."""

from __future__ import annotations

import numpy as np
import pytest

from tests.service.builders import case_files, load_bytes, multipart, write_files
from tests.service.tinyzoo_app import D_SAE, SEGFORMER_SAE, UNET, UNET_SAE, tiny_client, tiny_zoo, upload


def _core_ablation(tmp_path, latent: int, protect: tuple[str, ...] = ()):
    """The core's apply_spec for one ablation on the builders' case (no service code)."""
    from medseglens_core.data.preprocess import prepare_case
    from medseglens_core.interventions.apply import apply_spec
    from medseglens_core.interventions.cache import PrefixCache
    from medseglens_core.interventions.spec import Edit, InterventionSpec
    from medseglens_core.io import load_case_from_files
    from medseglens_core.models.card import load_model
    from medseglens_core.sae.io import load_sae

    files = write_files(tmp_path / "core", case_files())
    label = files.pop("label")
    case = load_case_from_files(files, label=label, case_id="core")
    model, _ = load_model(tiny_zoo() / "models" / UNET)
    sae, card = load_sae(tiny_zoo() / "saes" / UNET_SAE)
    cache = PrefixCache.build(model, prepare_case(case, model.cfg.input_size), card["hook"])
    spec = InterventionSpec(edits=[Edit(latent=latent, op="ablate")], protect=list(protect))
    return apply_spec(cache, sae, spec, label=case.label, spacing=case.geometry.spacing)


def test_empty_and_ablation_interventions(tmp_path):
    with tiny_client(tmp_path) as (client, headers):
        vid = upload(client, headers)
        seg = client.post(
            "/v1/segmentations",
            json={"volume_id": vid, "model_id": UNET, "sae_id": UNET_SAE},
            headers=headers,
        ).json()
        seg_mask = client.get(f"/v1/segmentations/{seg['id']}/mask", headers=headers).content

        def intervene(edits):
            body = {"volume_id": vid, "model_id": UNET, "sae_id": UNET_SAE, "edits": edits}
            return client.post("/v1/interventions", json=body, headers=headers)

        empty = intervene([])
        assert empty.status_code == 201, empty.text
        e = empty.json()
        assert e["changed_voxels"] == 0 and e["changed_tokens"] == 0 and e["rerun_slices"] == 0
        assert e["prefix_cache_hit"] is True  # the segmentation's prefix was reused
        assert e["volume_change_ml"] == {k: 0.0 for k in e["volume_change_ml"]}
        assert e["baseline"] == e["edited"]
        assert e["baseline"]["region_volumes_ml"] == pytest.approx(seg["region_volumes_ml"])
        empty_mask = client.get(f"/v1/interventions/{e['id']}/mask", headers=headers)
        assert empty_mask.status_code == 200
        a, b = load_bytes(seg_mask), load_bytes(empty_mask.content)
        np.testing.assert_array_equal(np.asarray(a.dataobj), np.asarray(b.dataobj))  # bit for bit
        np.testing.assert_array_equal(a.affine, b.affine)

        top = seg["top_latents"][0]["latent"]
        core = _core_ablation(tmp_path, top)
        r = intervene([{"latent": top, "op": "ablate"}])
        assert r.status_code == 201, r.text
        abl = r.json()
        assert abl["changed_voxels"] == core.changed_voxels
        assert abl["changed_tokens"] == core.changed_tokens > 0  # a top latent fires somewhere
        assert abl["volume_change_ml"] == pytest.approx(core.volume_change_ml)
        assert abl["dice_change"] == pytest.approx(core.dice_change)
        assert abl["edit_info"][0]["tokens_changed"] == core.edits[0].tokens_changed
        mask = load_bytes(client.get(f"/v1/interventions/{abl['id']}/mask", headers=headers).content)
        np.testing.assert_array_equal(np.asarray(mask.dataobj), core.edited_labels)
        assert client.get(f"/v1/interventions/{abl['id']}", headers=headers).json() == abl
        assert abl["protect"] == []

        # protect: the voxels the unedited model put in the region keep their label
        for regions in (["TC"], ["WT"]):
            kept = _core_ablation(tmp_path / "-".join(regions), top, tuple(regions))
            body = {"volume_id": vid, "model_id": UNET, "sae_id": UNET_SAE,
                    "edits": [{"latent": top, "op": "ablate"}], "protect": regions}  # fmt: skip
            r = client.post("/v1/interventions", json=body, headers=headers)
            assert r.status_code == 201, r.text
            assert r.json()["protect"] == regions and r.json()["changed_voxels"] == kept.changed_voxels
            got = load_bytes(client.get(f"/v1/interventions/{r.json()['id']}/mask", headers=headers).content)
            np.testing.assert_array_equal(np.asarray(got.dataobj), kept.edited_labels)
        assert kept.changed_voxels < core.changed_voxels  # protecting WT undoes part of the ablation
        bad = client.post("/v1/interventions", json={**body, "protect": ["core"]}, headers=headers)
        assert bad.status_code == 422 and bad.json()["type"].endswith("/validation-error"), bad.text

        # a gate: closed leaves the prediction alone, open applies the edits as without one
        def gated(threshold, latents=(top,), weights=(1.0,)):
            body = {"volume_id": vid, "model_id": UNET, "sae_id": UNET_SAE,
                    "edits": [{"latent": top, "op": "ablate"}],
                    "gate": {"latents": list(latents), "weights": list(weights), "threshold": threshold}}  # fmt: skip
            return client.post("/v1/interventions", json=body, headers=headers)

        closed, opened = gated(1e9).json(), gated(-1e9).json()
        assert closed["gate_open"] is False and closed["changed_voxels"] == 0 and closed["rerun_slices"] == 0
        assert closed["gate"]["threshold"] == 1e9 and closed["edited"] == closed["baseline"]
        assert opened["gate_open"] is True and opened["changed_voxels"] == core.changed_voxels
        assert opened["gate_score"] == closed["gate_score"]  # log(firing rate + 1e-4) of `top`
        assert np.log(1e-4) < opened["gate_score"] <= np.log(1 + 1e-4)
        assert abl["gate"] is None and abl["gate_open"] is None
        assert gated(0.0, latents=(D_SAE,)).json()["type"].endswith("/latent-out-of-range")
        assert gated(0.0, weights=(1.0, 2.0)).status_code == 422
        # a gate at another hook needs that hook's SAE of the same model
        body = {"volume_id": vid, "model_id": UNET, "sae_id": UNET_SAE, "edits": [{"latent": top, "op": "ablate"}],
                "gate": {"hook": "enc1", "latents": [0], "weights": [1.0], "threshold": 0.0}}  # fmt: skip
        r = client.post("/v1/interventions", json=body, headers=headers)
        assert r.status_code == 422 and r.json()["type"].endswith("/gate-sae-missing"), r.text
        r = client.post("/v1/interventions", json={**body, "gate_sae_id": UNET_SAE}, headers=headers)
        assert r.status_code == 422 and "not the gate's 'enc1'" in r.json()["detail"], r.text

        # spec errors are 422 problems
        for edits, slug in (
            ([{"latent": 0, "op": "explode"}], "validation-error"),
            ([{"latent": D_SAE, "op": "ablate"}], "latent-out-of-range"),
            ([{"latent": 0, "op": "clamp"}], "validation-error"),
            ([{"latent": 0, "op": "ablate", "scope": "mask"}], "mask-unavailable"),
            ([{"latent": 0, "op": "patch", "reference_cohort": "nowhere"}], "missing-reference"),
        ):
            bad = intervene(edits)
            assert bad.status_code == 422, (edits, bad.text)
            assert bad.json()["type"].endswith("/" + slug), bad.json()
        body = {"volume_id": vid, "model_id": UNET, "sae_id": SEGFORMER_SAE, "edits": []}
        mismatch = client.post("/v1/interventions", json=body, headers=headers)
        assert mismatch.status_code == 422 and mismatch.json()["type"].endswith("/sae-model-mismatch")
        assert client.get("/v1/interventions/" + "a" * 32, headers=headers).status_code == 404

        # scope "mask": the label map of another upload on the same grid; another grid is refused
        def masked(mask_vid):
            body = {"volume_id": vid, "model_id": UNET, "sae_id": UNET_SAE, "mask_volume_id": mask_vid,
                    "edits": [{"latent": top, "op": "ablate", "scope": "mask"}]}  # fmt: skip
            return client.post("/v1/interventions", json=body, headers=headers)

        in_mask = masked(upload(client, headers, seed=1))
        assert in_mask.status_code == 201, in_mask.text
        info = in_mask.json()["edit_info"][0]
        assert info["scope"] == "mask" and 0 < info["tokens_in_scope"] < core.edits[0].tokens_in_scope
        unlabelled = masked(upload(client, headers, label=False))
        assert unlabelled.status_code == 422 and unlabelled.json()["type"].endswith("/mask-unavailable")
        r = client.post("/v1/volumes", files=multipart(case_files(shape=(24, 28, 16))), headers=headers)
        other_grid = masked(r.json()["id"])
        assert other_grid.status_code == 422 and other_grid.json()["type"].endswith("/missing-mask")

        # patch to the adult cohort's statistics (computed once from the zoo's data)
        patch = intervene([{"latent": top, "op": "patch", "reference_cohort": "adult", "scope": "slices",
                            "slices": [2, 8]}])  # fmt: skip
        assert patch.status_code == 201, patch.text
        assert patch.json()["edit_info"][0]["scope"] == "slices"


def test_latent_cards_computed_from_zoo_data(tmp_path):
    with tiny_client(tmp_path) as (client, headers):
        r = client.get(f"/v1/saes/{UNET_SAE}/latents/3", headers=headers)
        assert r.status_code == 200, r.text
        card = r.json()
        assert card["source"] == "computed" and card["latent"] == 3
        assert set(card["firing_rate"]) == {"adult", "ssa"} and card["n_cases"] == {"adult": 3, "ssa": 3}
        assert all(0.0 <= v <= 1.0 for v in card["firing_rate"].values())
        mass = sum(card["region"].values())
        assert mass == pytest.approx(1.0, abs=1e-6) or mass == 0.0  # fractions of the latent's mass
        assert client.get(f"/v1/saes/{UNET_SAE}/latents/{D_SAE}", headers=headers).status_code == 404
        assert client.get("/v1/saes/nope/latents/0", headers=headers).status_code == 404
        png = client.get(f"/v1/saes/{UNET_SAE}/latents/3/examples.png", headers=headers)
        assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
        again = client.get(f"/v1/saes/{UNET_SAE}/latents/3/examples.png", headers=headers)
        assert again.content == png.content  # cached on disk


def test_cards_shipped_in_the_sae_dir_win(tmp_path):
    from medseglens_core.analysis.cards import write_cards
    from service.errors import ResourceNotFound
    from service.latent_cards import CardStore, CardsUnavailable
    from service.pool import Resident

    shipped = [{"latent": j, "firing_rate": {"adult": j / 10}, "mean_activation": {"adult": 0.0},
                "n_cases": {"adult": 2}, "region": {"healthy": 1.0}, "top_examples": []} for j in range(3)]  # fmt: skip
    write_cards(shipped, tmp_path / "sae" / "latents")
    sae = Resident("s", object(), {"id": "s", "model_id": "m"}, "cpu", tmp_path / "sae")
    store = CardStore(tmp_path / "no-zoo", tmp_path / "cache", sae, None)
    card, source = store.card(2)
    assert source == "sae_dir" and card["firing_rate"] == {"adult": 0.2}
    with pytest.raises(ResourceNotFound, match="has 3 latents"):
        store.card(3)
    bare = CardStore(
        tmp_path / "no-zoo", tmp_path / "cache", Resident("t", object(), {}, "cpu", tmp_path), None
    )
    with pytest.raises(CardsUnavailable, match="no latent cards"):
        bare.card(0)
