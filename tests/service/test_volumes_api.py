"""Volumes over HTTP: upload (four files or one 4-D file), list, get, preview, delete, restart survival."""

from __future__ import annotations

import hashlib

import numpy as np
from fastapi.testclient import TestClient

from service.app import create_app
from service.cases import load_volume_case
from service.models_db import Volume
from tests.service.builders import SHAPE, TUMOUR_Z, case_files, image_4d_bytes, multipart


def upload(client: TestClient, headers: dict, files: dict[str, bytes], **data: str):
    return client.post("/v1/volumes", headers=headers, files=multipart(files), data=data)


def test_upload_get_list_preview_delete(client, admin_headers, settings):
    files = case_files()
    r = upload(client, admin_headers, files, cohort="ssa", metadata='{"site": "A", "age": 41}')
    assert r.status_code == 201, r.text
    body = r.json()
    assert len(body["id"]) == 32
    assert body["shape"] == list(SHAPE)
    assert body["spacing"] == [2.0, 2.0, 2.0]
    assert body["has_label"] is True
    assert body["cohort"] == "ssa"
    assert body["metadata"] == {"site": "A", "age": 41}
    assert body["modality_order"] is None
    assert [f["role"] for f in body["files"]] == ["t1n", "t1c", "t2w", "t2f", "label"]
    for f in body["files"]:
        assert f["sha256"] == hashlib.sha256(files[f["role"]]).hexdigest()
        assert f["bytes"] == len(files[f["role"]])
    assert "PATIENT" not in r.text  # client file names never come back

    vid = body["id"]
    stored = settings.data_dir / "volumes" / vid
    assert sorted(p.name for p in stored.iterdir()) == sorted(f"{m}.nii.gz" for m in files)
    assert (stored / "t1n.nii.gz").read_bytes() == files["t1n"]  # stored as sent

    assert client.get(f"/v1/volumes/{vid}", headers=admin_headers).json() == body
    page = client.get("/v1/volumes", headers=admin_headers).json()
    assert page["total"] == 1 and page["items"][0]["id"] == vid

    png = client.get(f"/v1/volumes/{vid}/preview.png", headers=admin_headers)
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert png.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert (stored / "preview.png").read_bytes() == png.content  # cached

    assert client.delete(f"/v1/volumes/{vid}", headers=admin_headers).status_code == 204
    assert not stored.exists()
    r = client.get(f"/v1/volumes/{vid}", headers=admin_headers)
    assert r.status_code == 404 and r.headers["content-type"] == "application/problem+json"
    assert client.delete(f"/v1/volumes/{vid}", headers=admin_headers).status_code == 404


def test_4d_upload_with_declared_order_matches_separate_files(client, admin_headers, settings):
    order = ("t2f", "t1n", "t2w", "t1c")
    r4 = client.post(
        "/v1/volumes",
        headers=admin_headers,
        files={"image": ("x.nii.gz", image_4d_bytes(order), "application/gzip")},
        data={"modality_order": ",".join(order)},
    )
    assert r4.status_code == 201, r4.text
    assert r4.json()["modality_order"] == list(order)
    assert r4.json()["has_label"] is False
    r3 = upload(client, admin_headers, case_files(label=False))
    assert r3.status_code == 201

    storage = client.app.state.storage
    with client.app.state.sessionmaker() as session:
        case4 = load_volume_case(storage, session.get(Volume, r4.json()["id"]))
        case3 = load_volume_case(storage, session.get(Volume, r3.json()["id"]))
    # Channels come back in MODALITIES order whatever order the 4-D file declared.
    np.testing.assert_array_equal(case4.image, case3.image)
    assert client.get(f"/v1/volumes/{r4.json()['id']}/preview.png", headers=admin_headers).status_code == 200


def test_list_paginates_and_filters_by_cohort(client, admin_headers):
    ids = [
        upload(client, admin_headers, case_files(label=False), cohort=c).json()["id"] for c in ("a", "b", "a")
    ]
    first = client.get("/v1/volumes?limit=2&offset=0", headers=admin_headers).json()
    second = client.get("/v1/volumes?limit=2&offset=2", headers=admin_headers).json()
    assert first["total"] == second["total"] == 3
    assert (first["limit"], first["offset"], len(first["items"]), len(second["items"])) == (2, 0, 2, 1)
    seen = [v["id"] for v in first["items"] + second["items"]]
    assert sorted(seen) == sorted(ids)
    assert seen == list(reversed(ids))  # newest first
    a = client.get("/v1/volumes?cohort=a", headers=admin_headers).json()
    assert a["total"] == 2 and {v["id"] for v in a["items"]} == {ids[0], ids[2]}


def test_preview_picks_the_tumour_slice():
    from service.previews import preview_slice
    from tests.service.builders import arrays

    images, label = arrays()
    stack = np.stack([images[m] for m in ("t1n", "t1c", "t2w", "t2f")])
    assert preview_slice(stack, label) == TUMOUR_Z
    assert preview_slice(stack, None) == SHAPE[2] // 2


def test_volume_survives_restart(settings, make_key):
    headers = {"X-API-Key": make_key("read,segment")}
    with TestClient(create_app(settings)) as first:
        vid = upload(first, headers, case_files()).json()["id"]
    with TestClient(create_app(settings)) as second:
        r = second.get(f"/v1/volumes/{vid}", headers=headers)
        assert r.status_code == 200 and r.json()["has_label"] is True
        assert second.get(f"/v1/volumes/{vid}/preview.png", headers=headers).status_code == 200
        assert second.get("/v1/volumes", headers=headers).json()["total"] == 1
