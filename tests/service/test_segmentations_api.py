"""Segmentation routes on the tiny zoo: one network pass, results equal to the core's, artefacts."""

from __future__ import annotations

import numpy as np
import pytest

from tests.service.builders import AFFINE, SHAPE, case_files, load_bytes, write_files
from tests.service.tinyzoo_app import (
    D_SAE,
    SEGFORMER_SAE,
    UNET,
    UNET_SAE,
    new_key,
    tiny_client,
    tiny_zoo,
    upload,
)


def core_result(tmp_path, top_k: int = 5):
    """The core's own segmentation + latent summary of the builders' case (no service code)."""
    from medseglens_core.analysis.latents import analyse_case
    from medseglens_core.io import load_case_from_files
    from medseglens_core.metrics import region_volumes_ml, score_segmentation
    from medseglens_core.models.card import load_model
    from medseglens_core.models.inference import segment_case
    from medseglens_core.sae.io import load_sae

    files = write_files(tmp_path / "core", case_files())
    label = files.pop("label")
    case = load_case_from_files(files, label=label, case_id="core")
    model, _ = load_model(tiny_zoo() / "models" / UNET)
    sae, card = load_sae(tiny_zoo() / "saes" / UNET_SAE)
    labels = segment_case(model, case, device="cpu").labels
    labels_one_pass, summary = analyse_case(
        model, sae, case, hook=card["hook"], input_size=model.cfg.input_size, top_k=top_k
    )
    spacing = case.geometry.spacing
    return (
        case,
        labels,
        labels_one_pass,
        summary,
        region_volumes_ml(labels, spacing),
        score_segmentation(labels, case.label, spacing),
    )


def test_segment_matches_core_and_serves_artefacts(tmp_path):
    case, labels, labels_one_pass, summary, volumes, scores = core_result(tmp_path)
    np.testing.assert_array_equal(labels, labels_one_pass)  # one-pass path == plain inference
    with tiny_client(tmp_path) as (client, headers):
        vid = upload(client, headers)
        r = client.post(
            "/v1/segmentations",
            json={"volume_id": vid, "model_id": UNET, "sae_id": UNET_SAE, "top_k": 5},
            headers=headers,
        )
        assert r.status_code == 201, r.text
        seg = r.json()
        assert seg["sae_id"] == UNET_SAE and seg["hook"] == "bottleneck"
        assert seg["region_volumes_ml"] == pytest.approx(volumes)
        assert seg["scores"]["regions"]["WT"]["dice"] == pytest.approx(scores["regions"]["WT"]["dice"])
        assert [t["latent"] for t in seg["top_latents"]] == summary.top_total
        first = summary.stats[summary.top_total[0]]
        top = seg["top_latents"][0]
        assert top["total_activation"] == pytest.approx(first.total_activation, rel=1e-5)
        assert top["active_voxels"] == first.active_voxels
        assert top["overlap"]["ground_truth"]["SNFH"]["iou"] == pytest.approx(first.overlap_gt["SNFH"]["iou"])
        assert set(seg["timings"]) >= {"load_s", "network_s", "latents_s", "write_s", "total_s"}
        # the prefix is cached for interventions under (volume, model)
        assert (vid, UNET) in client.app.state.pool.prefix_cache._items

        mask = client.get(f"/v1/segmentations/{seg['id']}/mask", headers=headers)
        assert mask.status_code == 200 and mask.headers["content-type"] == "application/gzip"
        img = load_bytes(mask.content)
        np.testing.assert_array_equal(img.affine, AFFINE)
        np.testing.assert_array_equal(
            np.asarray(img.dataobj), labels
        )  # RAS input: original grid == case grid

        j = top["latent"]
        lat = client.get(f"/v1/segmentations/{seg['id']}/latents/{j}/map", headers=headers)
        assert lat.status_code == 200
        lmap = np.asarray(load_bytes(lat.content).dataobj)
        np.testing.assert_allclose(lmap, summary.latent_map(j), rtol=1e-5, atol=1e-6)
        assert int((lmap > 0).sum()) > 0
        # an in-range latent outside the top list is computed on demand
        other = next(k for k in range(D_SAE) if k not in summary.top_total)
        assert (
            client.get(f"/v1/segmentations/{seg['id']}/latents/{other}/map", headers=headers).status_code
            == 200
        )
        out_of_range = client.get(f"/v1/segmentations/{seg['id']}/latents/{D_SAE}/map", headers=headers)
        assert out_of_range.status_code == 404
        assert out_of_range.headers["content-type"] == "application/problem+json"

        png = client.get(f"/v1/segmentations/{seg['id']}/overlay.png?slice=3", headers=headers)
        assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
        bad = client.get(f"/v1/segmentations/{seg['id']}/overlay.png?slice={SHAPE[2]}", headers=headers)
        assert bad.status_code == 422 and bad.json()["type"].endswith("/slice-out-of-range")

        listed = client.get(f"/v1/segmentations?volume_id={vid}", headers=headers).json()
        assert listed["total"] == 1 and listed["items"][0]["id"] == seg["id"]
        assert client.get(f"/v1/segmentations/{seg['id']}", headers=headers).json() == seg


def test_unlabelled_default_sae_and_errors(tmp_path, database_url):
    # database_url (tests/service/conftest.py): SQLite and a fresh PostgreSQL schema
    with tiny_client(tmp_path, database_url) as (client, headers):
        vid = upload(client, headers, label=False)
        r = client.post(
            "/v1/segmentations", json={"volume_id": vid, "model_id": UNET, "top_k": 3}, headers=headers
        )
        assert r.status_code == 201, r.text
        body = r.json()
        assert body["scores"] is None and body["sae_id"] == UNET_SAE and len(body["top_latents"]) <= 3

        def post(payload, hdrs=headers):
            return client.post("/v1/segmentations", json=payload, headers=hdrs)

        mismatch = post({"volume_id": vid, "model_id": UNET, "sae_id": SEGFORMER_SAE})
        assert mismatch.status_code == 422 and mismatch.json()["type"].endswith("/sae-model-mismatch")
        assert post({"volume_id": vid, "model_id": "nope"}).status_code == 404
        assert post({"volume_id": "0" * 32, "model_id": UNET}).status_code == 404
        assert post({"volume_id": vid, "model_id": UNET, "top_k": 0}).status_code == 422
        assert post({"volume_id": vid, "model_id": UNET, "top_k": 101}).status_code == 422
        assert post({"volume_id": "../../etc/passwd", "model_id": UNET}).status_code == 422
        read_only = {"X-API-Key": new_key(client.app.state.settings, "read")}
        assert post({"volume_id": vid, "model_id": UNET}, read_only).status_code == 403
        assert client.get("/v1/segmentations/" + "f" * 32, headers=headers).status_code == 404
        assert client.get("/v1/segmentations").status_code == 401
        # deleting the volume removes its segmentations, their files and its cached prefixes
        seg_dir = client.app.state.storage.area_dir("segmentations", body["id"])
        assert seg_dir.is_dir() and (vid, UNET) in client.app.state.pool.prefix_cache._items
        assert client.delete(f"/v1/volumes/{vid}", headers=headers).status_code == 204
        assert client.get(f"/v1/segmentations/{body['id']}", headers=headers).status_code == 404
        assert not seg_dir.exists() and len(client.app.state.pool.prefix_cache) == 0
