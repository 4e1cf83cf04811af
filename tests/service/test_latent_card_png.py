"""A latent card's examples.png: the latent's map over each slice, titles that fit, one panel per case."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from service.latent_cards import (
    HEAT_FLOOR,
    PANEL_INCHES,
    TITLE_POINTS,
    ExamplePanel,
    examples_figure,
    examples_png,
)

DPI = 100  # examples_png's resolution


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def _panel_boxes(panels: list[ExamplePanel], vmax: float) -> tuple[list, list, tuple[int, int]]:
    """Pixel boxes ``(left, top, width, height)`` of each panel's axes, its title's extent, and the
    figure's ``(height, width)`` in pixels, as the PNG is drawn."""
    from medseglens_core.reports.plots import plt

    fig = examples_figure(panels, "sae  latent 0", vmax=vmax)
    fig.canvas.draw()
    height = int(round(fig.get_figheight() * DPI))
    boxes, titles = [], []
    for ax, _ in zip(fig.axes, panels, strict=False):
        b = ax.get_window_extent()
        boxes.append((b.x0, height - b.y1, b.width, b.height))
        titles.append(ax.title.get_window_extent())
        assert ax.title.get_fontsize() == TITLE_POINTS
    size = (height, int(round(fig.get_figwidth() * DPI)))
    plt.close(fig)
    return boxes, titles, size


def _check_overlay(panels: list[ExamplePanel], min_changed: float = 1.0) -> None:
    """Pixels change where a panel's heat is drawn (above the floor) and nowhere else."""
    vmax = max(float(p.heat.max()) for p in panels)
    hot = _decode(examples_png(panels, "sae  latent 0", vmax=vmax))
    cold = _decode(
        examples_png([replace(p, heat=np.zeros_like(p.heat)) for p in panels], "sae  latent 0", vmax=vmax)
    )
    changed = np.abs(hot - cold).sum(-1) > 0
    boxes, _, _ = _panel_boxes(panels, vmax)
    inside = np.zeros_like(changed)
    for p, (left, top, w, h) in zip(panels, boxes, strict=True):
        size = p.heat.shape[0]
        rows, cols = np.mgrid[int(top) + 1 : int(top + h) - 1, int(left) + 1 : int(left + w) - 1]
        gx = ((cols + 0.5 - left) / w * size).astype(int).clip(0, size - 1)  # drawn x right
        gy = ((top + h - rows - 0.5) / h * size).astype(int).clip(0, size - 1)  # drawn y up
        fires, here = np.zeros_like(changed), np.zeros_like(changed)
        fires[rows, cols] = p.heat[gx, gy] > HEAT_FLOOR * vmax
        here[rows, cols] = True
        inside[int(top) - 1 : int(top + h) + 2, int(left) - 1 : int(left + w) + 2] = True  # edges blend
        sure = ndimage.binary_erosion(fires, iterations=2)
        never = here & ~ndimage.binary_dilation(fires, iterations=2)
        if sure.any():
            assert changed[sure].mean() >= min_changed, (p.case_id, changed[sure].mean())
        assert not changed[never].any(), p.case_id
    assert not changed[~inside].any()  # titles, colour bar and margins are the same


def _synthetic(n: int = 3, size: int = 32) -> list[ExamplePanel]:
    rng = np.random.default_rng(0)
    panels = []
    for i in range(n):
        heat = np.zeros((size, size), np.float32)
        if i != 1:  # the middle panel's latent does not fire
            heat[4 + 6 * i : 14 + 6 * i, 18:28] = 1.0 + i
        panels.append(
            ExamplePanel(
                rng.uniform(0.3, 1.0, (size, size)), heat, f"BraTS-SSA-{i:05d}-000", "ssa", 40 + i, 1.0 + i
            )
        )
    return panels


def test_heat_overlay_changes_pixels_only_where_the_latent_fires() -> None:
    _check_overlay(_synthetic())


def test_panels_titles_and_size() -> None:
    long_id = "a-very-long-case-identifier-from-a-pacs-export-0001"
    panels = _synthetic(4)
    panels[0] = replace(panels[0], case_id=long_id, cohort="pediatric")
    png = _decode(examples_png(panels, "unet-adult-dec1-batchtopk  latent 158"))
    assert png.shape[:2] == (
        int(round((PANEL_INCHES + 0.9) * DPI)),
        int(round((PANEL_INCHES * 4 + 0.8) * DPI)),
    )
    boxes, titles, (height, width) = _panel_boxes(panels, 4.0)
    assert len(boxes) == 4 and len({round(b[2]) for b in boxes}) == 1  # four panels of one size
    for t in titles:
        assert t.x0 >= 0 and t.x1 <= width and t.y0 >= 0 and t.y1 <= height
    for a, b in zip(titles, titles[1:], strict=False):
        assert a.x1 < b.x0  # neighbouring titles never meet
    for t, (left, _top, w, _h) in zip(titles, boxes, strict=True):
        assert left - 4 <= t.x0 and t.x1 <= left + w + 4  # a title is no wider than its panel
    from medseglens_core.reports.plots import plt

    fig = examples_figure(panels, "x")
    text = fig.axes[0].get_title()
    plt.close(fig)
    assert "pediatric" in text and "z=40" in text and long_id not in text and text.startswith("a-very-long")


def test_an_empty_card_still_renders() -> None:
    png = _decode(examples_png([], "sae  latent 3", note="model 'm' is not loaded"))
    assert png.shape[1] == int(round((PANEL_INCHES + 0.8) * DPI))


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory):
    from medseglens_core.models.card import load_model
    from medseglens_core.sae.io import load_sae
    from service.latent_cards import CardStore
    from service.pool import Resident
    from tests.service.tinyzoo_app import UNET, UNET_SAE, tiny_zoo

    zoo = tiny_zoo()
    model, mcard = load_model(zoo / "models" / UNET)
    sae, scard = load_sae(zoo / "saes" / UNET_SAE)
    return CardStore(
        zoo,
        tmp_path_factory.mktemp("cache"),
        Resident(UNET_SAE, sae.eval(), scard, "cpu", zoo / "saes" / UNET_SAE),
        Resident(UNET, model.eval(), mcard, "cpu", zoo / "models" / UNET),
    )


def test_tiny_zoo_examples_show_the_latent_map(tiny_store) -> None:
    import json

    cards, source = tiny_store.cards()
    assert source == "computed"
    latent = max(range(len(cards)), key=lambda j: sum(cards[j]["mean_activation"].values()))
    top = json.loads((tiny_store.dir / "top_cases.json").read_text())[latent]
    png = _decode(tiny_store.examples_png(latent))
    assert png.shape[1] == int(round((PANEL_INCHES * len(top) + 0.8) * DPI))  # one panel per top case
    panels = [tiny_store._panel(latent, t) for t in top]
    assert all(p is not None and p.heat.shape == p.slice.shape == (32, 32) for p in panels)
    assert [p.cohort for p in panels] == [t["cohort"] for t in top]
    assert all(p.value == pytest.approx(float(p.heat.max()), rel=0.5) for p in panels)  # the upsampled map
    _check_overlay(panels, min_changed=0.9)  # a black background pixel under dark heat may stay black
