"""The overlay PNG is readable on its own: a legend names the NCR/SNFH/ET outline colours and the
heading gives the slice index and the model. Looked at: docs/overlay-example.png (the demo
U-Net on a synthetic adult case)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from service.previews import LABEL_COLOURS, render_case_preview
from tests.service.tinyzoo_app import UNET, tiny_client, upload


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))  # type: ignore[return-value]


def _legend_colours(png: bytes) -> set[int]:
    """Label values whose colour fills a solid patch in the bottom strip (the legend)."""
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    strip = img[int(img.shape[0] * 0.88) :]
    found = set()
    for value, colour in LABEL_COLOURS.items():
        if (np.all(strip == np.array(_rgb(colour), np.uint8), axis=-1)).sum() >= 20:
            found.add(value)
    return found


def test_overlay_png_has_a_legend_of_the_three_labels(tmp_path):
    with tiny_client(tmp_path) as (client, headers):
        vid = upload(client, headers)
        sid = client.post(
            "/v1/segmentations", json={"volume_id": vid, "model_id": UNET}, headers=headers
        ).json()["id"]
        r = client.get(f"/v1/segmentations/{sid}/overlay.png", headers=headers)
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        assert _legend_colours(r.content) == {1, 2, 3}
        preview = client.get(f"/v1/volumes/{vid}/preview.png", headers=headers)
        assert preview.status_code == 200 and _legend_colours(preview.content) == {1, 2, 3}


def test_no_label_no_legend():
    rng = np.random.default_rng(0)
    image = rng.normal(size=(4, 48, 52, 12)).astype(np.float32)
    assert _legend_colours(render_case_preview(image, None)) == set()
    label = np.zeros((48, 52, 12), np.uint8)
    yy, xx = np.mgrid[:48, :52]
    disc = (xx - 26) ** 2 + (yy - 24) ** 2
    label[..., 6][disc < 150] = 2
    label[..., 6][disc < 60] = 3
    label[..., 6][disc < 15] = 1
    image[:, label > 0] += 2.0
    png = render_case_preview(image, label, caption="predicted by unet-adult")
    assert _legend_colours(png) == {1, 2, 3}
