"""A corrupted safetensors file in the zoo: that entry is reported unavailable, the rest serves."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.app import create_app
from service.config import Settings
from service.pool import WEIGHTS_FILES, CorruptZooEntry, check_entry
from tests.service.tinyzoo_app import (
    SEGFORMER,
    SEGFORMER_SAE,
    UNET,
    UNET_SAE,
    new_key,
    tiny_pool,
    tiny_zoo,
    upload,
)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garble_header(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(b"\xff" * 8 + data[8:])


def _flip_last_byte(path: Path) -> None:  # the header still parses: only the sha256 notices
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "truncated": _truncate,
    "garbled-header": _garble_header,
    "flipped-byte": _flip_last_byte,
}


@contextmanager
def app_over(tmp_path: Path, zoo: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    settings = Settings(
        data_dir=tmp_path / "data",
        database_url=f"sqlite:///{tmp_path / 'test.db'}",
        zoo=zoo,
        device="cpu",
        max_upload_bytes=4 * 2**20,
        max_voxels=200_000,
        log_level="WARNING",
    )
    headers = {"Authorization": f"Bearer {new_key(settings)}"}
    with TestClient(create_app(settings, pool=tiny_pool(zoo)), raise_server_exceptions=False) as client:
        yield client, headers


def _zoo_copy(tmp_path: Path) -> Path:
    zoo = tmp_path / "zoo"
    shutil.copytree(tiny_zoo(), zoo, symlinks=True)
    return zoo


def _problem(r, status: int, slug: str) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    body = r.json()
    assert body["type"].endswith("/" + slug), body
    return body


@pytest.mark.parametrize("corrupt", sorted(CORRUPTIONS))
def test_a_corrupted_sae_is_unavailable_and_the_rest_serves(tmp_path, corrupt):
    zoo = _zoo_copy(tmp_path)
    CORRUPTIONS[corrupt](zoo / "saes" / UNET_SAE / WEIGHTS_FILES["sae"])
    with app_over(tmp_path, zoo) as (client, headers):
        listed = client.get("/v1/saes", headers=headers).json()
        assert [s["id"] for s in listed["items"]] == [SEGFORMER_SAE]
        [broken] = listed["unavailable"]
        assert (broken["id"], broken["model_id"], broken["available"]) == (UNET_SAE, UNET, False)
        assert UNET_SAE in broken["error"] and "re-copy" in broken["error"]
        assert (
            client.get("/v1/saes", params={"model_id": SEGFORMER}, headers=headers).json()["unavailable"]
            == []
        )

        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.text
        models = ready.json()["checks"]["models"]
        assert models["saes"] == 1 and models["errors"] == [f"sae:{UNET_SAE}"]
        assert UNET_SAE in models["unavailable"][f"sae:{UNET_SAE}"]

        p = _problem(client.get(f"/v1/saes/{UNET_SAE}", headers=headers), 503, "zoo-entry-unavailable")
        assert UNET_SAE in p["detail"] and p["entry"] == f"sae:{UNET_SAE}"
        _problem(client.get(f"/v1/saes/{UNET_SAE}/latents/0", headers=headers), 503, "zoo-entry-unavailable")
        _problem(client.get("/v1/saes/no-such-sae", headers=headers), 404, "not-found")

        vid = upload(client, headers)
        body = {"volume_id": vid, "model_id": UNET, "sae_id": UNET_SAE, "top_k": 3}
        p = _problem(
            client.post("/v1/segmentations", json=body, headers=headers), 503, "zoo-entry-unavailable"
        )
        assert UNET_SAE in p["detail"]
        edit = {
            "volume_id": vid,
            "model_id": UNET,
            "sae_id": UNET_SAE,
            "edits": [{"latent": 0, "op": "ablate"}],
        }
        _problem(client.post("/v1/interventions", json=edit, headers=headers), 503, "zoo-entry-unavailable")

        other = {"volume_id": vid, "model_id": SEGFORMER, "sae_id": SEGFORMER_SAE, "top_k": 3}
        made = client.post("/v1/segmentations", json=other, headers=headers)
        assert made.status_code == 201, made.text
        assert client.get(f"/v1/saes/{SEGFORMER_SAE}/latents/0", headers=headers).status_code == 200


def test_a_corrupted_model_is_unavailable_and_the_other_model_serves(tmp_path):
    zoo = _zoo_copy(tmp_path)
    _truncate(zoo / "models" / UNET / WEIGHTS_FILES["model"])
    with app_over(tmp_path, zoo) as (client, headers):
        listed = client.get("/v1/models", headers=headers).json()
        assert [m["id"] for m in listed["items"]] == [SEGFORMER]
        assert [u["id"] for u in listed["unavailable"]] == [UNET]
        assert client.get("/readyz").status_code == 200  # one model still serves
        _problem(client.get(f"/v1/models/{UNET}", headers=headers), 503, "zoo-entry-unavailable")
        vid = upload(client, headers)
        body = {"volume_id": vid, "model_id": UNET, "top_k": 3}
        p = _problem(
            client.post("/v1/segmentations", json=body, headers=headers), 503, "zoo-entry-unavailable"
        )
        assert UNET in p["detail"]
        body = {"volume_id": vid, "model_id": SEGFORMER, "sae_id": SEGFORMER_SAE, "top_k": 3}
        assert client.post("/v1/segmentations", json=body, headers=headers).status_code == 201


def test_check_entry_reads_only_the_header_and_the_checksum(tmp_path):
    zoo = _zoo_copy(tmp_path)
    sae_dir = zoo / "saes" / UNET_SAE
    assert check_entry("sae", sae_dir)["id"] == UNET_SAE
    card = json.loads((sae_dir / "card.json").read_text())
    card.pop("weights_sha256")
    (sae_dir / "card.json").write_text(json.dumps(card))
    _flip_last_byte(sae_dir / WEIGHTS_FILES["sae"])
    check_entry("sae", sae_dir)  # no recorded checksum: a flipped data byte cannot be seen
    _truncate(sae_dir / WEIGHTS_FILES["sae"])
    with pytest.raises(CorruptZooEntry, match="not a readable safetensors file"):
        check_entry("sae", sae_dir)
    (sae_dir / "card.json").write_text("[1, 2")
    with pytest.raises(CorruptZooEntry, match="card.json"):
        check_entry("sae", sae_dir)


def test_the_pool_knows_the_cores_weights_file_names():
    from medseglens_core.models.card import WEIGHTS as MODEL_WEIGHTS
    from medseglens_core.sae.io import WEIGHTS as SAE_WEIGHTS

    assert WEIGHTS_FILES == {"model": MODEL_WEIGHTS, "sae": SAE_WEIGHTS}
