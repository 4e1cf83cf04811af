"""Real uvicorn (`medseglens serve`) on a free port: upload -> segment -> intervene -> download mask.

The downloaded masks are compared with ``medseglens_core`` run directly on the same files, and
with a non-RAS input affine so the original-grid round trip is exercised over HTTP.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from service.config import Settings
from tests.service.builders import arrays, load_bytes, multipart, nifti_bytes, write_files
from tests.service.tinyzoo_app import UNET, UNET_SAE, new_key, tiny_zoo

ROOT = Path(__file__).resolve().parents[2]
# LPS-like axes (x and y flipped) with an offset: the stored mask must keep exactly this affine.
AFFINE = np.array([[-2.0, 0, 0, 40.0], [0, -2.0, 0, 50.0], [0, 0, 2.0, -10.0], [0, 0, 0, 1]])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(data_dir: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "MEDSEGLENS_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT),
           "MEDSEGLENS_DEVICE": "cpu", "MEDSEGLENS_LOG_LEVEL": "WARNING"}  # fmt: skip
    cmd = [sys.executable, "-c", "from service.cli import main; main()", "serve", "--zoo", str(tiny_zoo()),
           "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise RuntimeError(f"server did not start: {proc.communicate()[1][-2000:]}")


def _core_masks(tmp_path: Path, files: dict[str, bytes], latent_of: int | None):
    """Core labels (baseline and with ``latent_of`` ablated) written with io.write_label_map."""
    from medseglens_core.data.preprocess import prepare_case
    from medseglens_core.interventions.apply import apply_spec
    from medseglens_core.interventions.cache import PrefixCache
    from medseglens_core.interventions.spec import Edit, InterventionSpec
    from medseglens_core.io import load_case_from_files, write_label_map
    from medseglens_core.models.card import load_model
    from medseglens_core.models.inference import segment_case
    from medseglens_core.sae.io import load_sae

    paths = write_files(tmp_path / "core", files)
    label = paths.pop("label")
    case = load_case_from_files(paths, label=label, case_id="core")
    model, _ = load_model(tiny_zoo() / "models" / UNET)
    sae, card = load_sae(tiny_zoo() / "saes" / UNET_SAE)
    write_label_map(segment_case(model, case, device="cpu").labels, case.geometry, tmp_path / "seg.nii.gz")
    cache = PrefixCache.build(model, prepare_case(case, model.cfg.input_size), card["hook"])
    result = apply_spec(cache, sae, InterventionSpec(edits=[Edit(latent=latent_of, op="ablate")]))
    write_label_map(result.edited_labels, case.geometry, tmp_path / "edit.nii.gz")
    return tmp_path / "seg.nii.gz", tmp_path / "edit.nii.gz", result


@pytest.mark.slow
def test_upload_segment_intervene_download_over_http(tmp_path):
    import nibabel as nib

    images, lab = arrays()
    files = {m: nifti_bytes(a, AFFINE) for m, a in images.items()}
    files["label"] = nifti_bytes(lab, AFFINE)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    key = new_key(Settings(data_dir=data_dir))
    headers = {"X-API-Key": key}
    port = _free_port()
    proc = _serve(data_dir, port)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, headers=headers, timeout=120) as http:
            vol = http.post("/v1/volumes", files=multipart(files))
            assert vol.status_code == 201, vol.text
            vid = vol.json()["id"]
            seg = http.post(
                "/v1/segmentations", json={"volume_id": vid, "model_id": UNET, "sae_id": UNET_SAE}
            )
            assert seg.status_code == 201, seg.text
            top = seg.json()["top_latents"][0]["latent"]
            edit = http.post(
                "/v1/interventions",
                json={"volume_id": vid, "model_id": UNET, "sae_id": UNET_SAE,
                      "edits": [{"latent": top, "op": "ablate"}]},
            )  # fmt: skip
            assert edit.status_code == 201, edit.text
            assert edit.json()["prefix_cache_hit"] is True
            seg_mask = load_bytes(http.get(f"/v1/segmentations/{seg.json()['id']}/mask").content)
            edit_mask = load_bytes(http.get(f"/v1/interventions/{edit.json()['id']}/mask").content)
            metrics = http.get("/metrics").text
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
    core_seg, core_edit, result = _core_masks(tmp_path, files, top)
    assert edit.json()["changed_voxels"] == result.changed_voxels
    for served, expected in ((seg_mask, nib.load(core_seg)), (edit_mask, nib.load(core_edit))):
        np.testing.assert_array_equal(served.affine, AFFINE)
        np.testing.assert_array_equal(served.affine, expected.affine)
        np.testing.assert_array_equal(np.asarray(served.dataobj), np.asarray(expected.dataobj))
    # the stored label went in on the LPS grid and must come back aligned with it
    assert served.shape == lab.shape
    assert 'medseglens_inference_seconds_count{device="cpu",kind="segmentation"} 1.0' in metrics
    assert 'medseglens_inference_seconds_count{device="cpu",kind="intervention"} 1.0' in metrics
