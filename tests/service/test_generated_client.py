"""A Python client generated from the committed openapi/openapi.json uploads a volume and segments it.

``openapi-python-client`` runs offline into ``tmp_path`` with ``openapi/client-config.yaml`` (the
binary media types read as bytes); the generated package is imported and driven against a TestClient
(an ``httpx.Client``) over the tiny zoo. The mask and overlay come back typed, as ``File`` bytes.
"""

from __future__ import annotations

import importlib
import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.service.builders import case_files, load_bytes
from tests.service.tinyzoo_app import UNET, UNET_SAE, tiny_client

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "openapi" / "openapi.json"
CONFIG = ROOT / "openapi" / "client-config.yaml"


def _generate(out: Path) -> None:
    exe = Path(sys.executable).with_name("openapi-python-client")
    env = {**os.environ, "PATH": f"{exe.parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    done = subprocess.run(
        [str(exe), "generate", "--path", str(DOCUMENT), "--config", str(CONFIG), "--output-path", str(out)]
        + ["--meta", "none"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / "api" / "segmentations" / "create_segmentation.py").is_file()


def test_generated_client_uploads_and_segments(tmp_path):
    _generate(tmp_path / "msl_client")
    sys.path.insert(0, str(tmp_path))
    try:
        create_volume = importlib.import_module("msl_client.api.volumes.create_volume")
        create_segmentation = importlib.import_module("msl_client.api.segmentations.create_segmentation")
        get_mask = importlib.import_module("msl_client.api.segmentations.get_segmentation_mask")
        get_overlay = importlib.import_module("msl_client.api.segmentations.get_segmentation_overlay")
        models = importlib.import_module("msl_client.models")
        types = importlib.import_module("msl_client.types")
        client_mod = importlib.import_module("msl_client.client")
        with tiny_client(tmp_path) as (http, headers):
            http.headers.update(headers)
            client = client_mod.Client(base_url="http://testserver")
            client.set_httpx_client(http)
            parts = {
                role: types.File(
                    payload=io.BytesIO(data), file_name=f"{role}.nii.gz", mime_type="application/gzip"
                )
                for role, data in case_files().items()
            }
            volume = create_volume.sync(client=client, body=models.CreateVolumeVolumeUpload(**parts))
            assert isinstance(volume, models.VolumeOut), volume
            assert volume.shape == [24, 28, 20] and volume.has_label
            seg = create_segmentation.sync(
                client=client,
                body=models.SegmentationCreate(volume_id=volume.id, model_id=UNET, sae_id=UNET_SAE, top_k=3),
            )
            assert isinstance(seg, models.SegmentationOut), seg
            assert seg.sae_id == UNET_SAE and 0 < len(seg.top_latents) <= 3
            assert seg.scores is not None and 0.0 <= seg.scores.regions["WT"].dice <= 1.0
            assert seg.region_volumes_ml["WT"] >= seg.region_volumes_ml["TC"] >= seg.region_volumes_ml["ET"]
            problem = create_segmentation.sync(
                client=client, body=models.SegmentationCreate(volume_id="0" * 32, model_id=UNET)
            )
            assert isinstance(problem, models.Problem) and problem.status == 404
            mask = get_mask.sync(client=client, segmentation_id=seg.id)  # typed: the bytes as a File
            assert isinstance(mask, types.File), mask
            labels = np.asarray(load_bytes(mask.payload.read()).dataobj)
            assert labels.shape == (24, 28, 20) and set(np.unique(labels)) <= {0, 1, 2, 3}
            png = get_overlay.sync(client=client, segmentation_id=seg.id)
            assert isinstance(png, types.File) and png.payload.read().startswith(b"\x89PNG\r\n\x1a\n")
    finally:
        sys.path.remove(str(tmp_path))
        for name in [m for m in sys.modules if m == "msl_client" or m.startswith("msl_client.")]:
            del sys.modules[name]
