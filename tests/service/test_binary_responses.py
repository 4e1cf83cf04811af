"""Every file download is typed in the OpenAPI document as binary of its media type, so a
generated client returns bytes (see test_generated_client.py)."""

from __future__ import annotations

from service.app import create_app
from service.config import Settings

BINARY = {
    "/v1/segmentations/{segmentation_id}/mask": "application/gzip",
    "/v1/segmentations/{segmentation_id}/latents/{latent}/map": "application/gzip",
    "/v1/interventions/{intervention_id}/mask": "application/gzip",
    "/v1/segmentations/{segmentation_id}/overlay.png": "image/png",
    "/v1/volumes/{volume_id}/preview.png": "image/png",
    "/v1/saes/{sae_id}/latents/{latent}/examples.png": "image/png",
}


def test_file_downloads_are_typed_binary(tmp_path):
    spec = create_app(Settings(data_dir=tmp_path / "d", zoo=tmp_path / "zoo")).openapi()
    for path, media in BINARY.items():
        content = spec["paths"][path]["get"]["responses"]["200"]["content"]
        assert content == {media: {"schema": {"type": "string", "format": "binary"}}}, (path, content)
    for path, ops in spec["paths"].items():  # no other download is left untyped
        for op in ops.values():
            for media, body in op.get("responses", {}).get("200", {}).get("content", {}).items():
                if media.startswith(("image/", "application/gzip", "application/dicom")):
                    assert body["schema"].get("format") == "binary", (path, media)
