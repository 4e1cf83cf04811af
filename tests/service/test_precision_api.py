"""MEDSEGLENS_PRECISION: the resident networks run under bf16 autocast, and every result says so."""

from __future__ import annotations

import os
import subprocess
import sys

import pydantic
import pytest

from medseglens_core.errors import InvalidInput
from service.config import Settings
from tests.service.tinyzoo_app import UNET, UNET_SAE, tiny_client, tiny_pool, tiny_zoo, upload


def test_bf16_pool_segments_intervenes_and_records_its_precision(tmp_path):
    with tiny_client(tmp_path, precision="bf16") as (client, headers):
        pool = client.app.state.pool
        try:
            assert pool.precision == "bf16" and pool.models[UNET].obj.precision == "bf16"
            vid = upload(client, headers)
            body = {"volume_id": vid, "model_id": UNET, "sae_id": UNET_SAE}
            seg = client.post("/v1/segmentations", json=body | {"top_k": 3}, headers=headers)
            assert seg.status_code == 201, seg.text
            assert seg.json()["provenance"]["precision"] == "bf16"
            assert seg.json()["top_latents"]  # SAE codes from bf16 activations, encoded in float32
            empty = client.post("/v1/interventions", json=body | {"edits": []}, headers=headers)
            assert empty.status_code == 201, empty.text
            e = empty.json()
            assert e["changed_voxels"] == 0 and e["baseline"] == e["edited"]
            assert e["provenance"]["precision"] == "bf16"
        finally:  # the tiny pool's model objects are shared across tests
            for resident in pool.models.values():
                resident.obj.set_precision("fp32")
    (tmp_path / "fp32").mkdir()
    with tiny_client(tmp_path / "fp32") as (client, headers):
        vid = upload(client, headers)
        body = {"volume_id": vid, "model_id": UNET, "sae_id": UNET_SAE}
        assert (
            client.post("/v1/segmentations", json=body, headers=headers).json()["provenance"]["precision"]
            == "fp32"
        )


def test_fp16_on_a_cpu_and_unknown_precisions_are_refused_at_startup():
    with pytest.raises(InvalidInput, match="fp16 needs a CUDA device"):
        tiny_pool(tiny_zoo(), precision="fp16").load()
    with pytest.raises(InvalidInput, match="unknown precision"):
        tiny_pool(tiny_zoo(), precision="int8")
    with pytest.raises(pydantic.ValidationError, match="precision"):
        Settings(precision="int8")


def test_serve_refuses_fp16_on_a_cpu_with_one_line(tmp_path):
    env = {**os.environ, "MEDSEGLENS_PRECISION": "fp16", "MEDSEGLENS_DEVICE": "cpu",
           "MEDSEGLENS_DATA_DIR": str(tmp_path / "data")}  # fmt: skip
    cmd = [sys.executable, "-c", "from service.cli import main; main()", "serve", "--zoo", str(tiny_zoo())]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2 and len(lines) == 1 and "fp16 needs a CUDA device" in lines[0], res.stderr
    assert not (tmp_path / "data").exists()  # refused before anything was created
