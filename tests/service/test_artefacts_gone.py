"""Rows whose files were deleted on disk answer 410 problem+json naming what to redo; list bounds."""

from __future__ import annotations

import shutil

from tests.service.tinyzoo_app import UNET, UNET_SAE, tiny_client, upload


def _problem(r, status: int) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    return r.json()


def test_deleted_segmentation_files_are_410_not_500_and_not_regenerated(tmp_path):
    with tiny_client(tmp_path) as (client, headers):
        vid = upload(client, headers)
        body = {"volume_id": vid, "model_id": UNET, "sae_id": UNET_SAE, "top_k": 3}
        seg = client.post("/v1/segmentations", json=body, headers=headers).json()
        sid = seg["id"]
        latent = seg["top_latents"][0]["latent"]
        edit = {**body, "edits": [{"latent": latent, "op": "ablate"}]}
        edit.pop("top_k")
        iid = client.post("/v1/interventions", json=edit, headers=headers).json()["id"]
        assert client.get(f"/v1/segmentations/{sid}/mask", headers=headers).status_code == 200
        folder = tmp_path / "data" / "segmentations" / sid
        assert folder.is_dir()
        shutil.rmtree(folder)
        shutil.rmtree(tmp_path / "data" / "interventions" / iid)
        for path in (
            f"/v1/segmentations/{sid}/mask",
            f"/v1/segmentations/{sid}/overlay.png",
            f"/v1/segmentations/{sid}/latents/{latent}/map",
        ):
            p = _problem(client.get(path, headers=headers), 410)
            assert p["type"].endswith("/artefact-gone") and sid in p["detail"] and "re-run" in p["detail"]
        assert not folder.exists()  # nothing was silently made again
        p = _problem(client.get(f"/v1/interventions/{iid}/mask", headers=headers), 410)
        assert iid in p["detail"] and "POST /v1/interventions" in p["detail"]
        assert client.get(f"/v1/segmentations/{sid}", headers=headers).status_code == 200  # the row stays


def test_list_offsets_are_bounded(tmp_path):
    with tiny_client(tmp_path) as (client, headers):
        for path in ("/v1/volumes", "/v1/segmentations", "/v1/jobs"):
            for offset in (2**63, 2**64, 10**9 + 1, -1):
                r = client.get(path, params={"offset": str(offset)}, headers=headers)
                assert _problem(r, 422)["type"].endswith("/validation-error")
            assert client.get(path, params={"offset": str(10**9)}, headers=headers).status_code == 200
