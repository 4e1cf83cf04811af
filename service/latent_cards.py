"""Latent cards of resident SAEs, and the cohort statistics ``patch`` interventions need.

Cards come from the SAE directory when it ships them (``ZOO/saes/<id>/latents/cards.json`` or
``ZOO/saes/<id>/cards.json``, written by ``analysis.cards.write_cards``). Otherwise they are
computed once, lazily, from the zoo's data (``ZOO/data/test/<cohort>/``, else ``ZOO/data/<cohort>/``)
with ``analysis.diff.cohort_case_stats`` + ``analysis.cards.cards_from_stats`` and cached under
``DATA_DIR/cache/latent-cards/<sae_id>-<weights sha prefix>/``::

    cards.json        one card per latent (firing rate, mean activation per cohort, regions)
    reference.npz     per cohort: mean code of each latent where it fires (``patch`` statistics)
    top_cases.json    per latent: the cases with the highest mean activation (for examples.png)
    examples/heat-<j>.png  rendered examples (:func:`examples_png`)

``examples.png`` shows each top case's slice where the latent is strongest (for computed cards;
shipped cards name their slice) with the latent's activation map over it, found on first request
with one prefix pass per case.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.errors import ResourceNotFound
from service.pool import Resident
from service.storage import atomic_write_bytes

MAX_SLICES = 24  # brain slices per case for computed cards (evenly spaced); bounds the lazy pass
N_EXAMPLE_CASES = 4
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


def _lock(key: str) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(key, threading.Lock())


class CardsUnavailable(ResourceNotFound):
    """The SAE ships no latent cards and the zoo holds no case data to compute them from."""


def data_root(zoo: Path) -> Path | None:
    """The zoo's held-out cases (:func:`medseglens_core.catalog.held_out_data`), or None."""
    from medseglens_core.catalog import held_out_data

    return held_out_data(zoo)


class CardStore:
    """Cards and cohort statistics of one SAE (blocking; call through ``ModelPool.run``)."""

    def __init__(self, zoo: Path, cache_root: Path, sae: Resident, model: Resident | None) -> None:
        self.zoo = Path(zoo)
        self.sae = sae
        self.model = model
        sha = str(sae.card.get("weights_sha256", ""))[:12]
        self.dir = Path(cache_root) / "latent-cards" / (f"{sae.id}-{sha}" if sha else sae.id)

    def shipped(self) -> Path | None:
        """The cards file shipped in the SAE directory, if any."""
        for candidate in (self.sae.path / "latents" / "cards.json", self.sae.path / "cards.json"):
            if candidate.is_file():
                return candidate
        return None

    def cards(self) -> tuple[list[dict[str, Any]], str]:
        """``(cards, source)``: ``source`` is ``sae_dir`` or ``computed``."""
        shipped = self.shipped()
        if shipped is not None:
            return json.loads(shipped.read_text()), "sae_dir"
        self.ensure_computed()
        return json.loads((self.dir / "cards.json").read_text()), "computed"

    def reference_stats(self) -> dict[str, np.ndarray]:
        """Cohort -> ``(d_sae,)`` mean code where each latent fires (``patch`` edits)."""
        self.ensure_computed()
        with np.load(self.dir / "reference.npz") as data:
            return {name: data[name] for name in data.files}

    def ensure_computed(self) -> None:
        """Compute cards, reference statistics and top cases from the zoo data once."""
        if (self.dir / "cards.json").is_file():
            return
        with _lock(str(self.dir)):
            if (self.dir / "cards.json").is_file():
                return
            self._compute()

    def _cohorts(self) -> dict[str, list[Path]]:
        from medseglens_core.analysis.zoo import discover_cohorts

        root = data_root(self.zoo)
        if root is None or self.model is None:
            raise CardsUnavailable(
                f"SAE {self.sae.id!r} ships no latent cards and the zoo has no case data (ZOO/data) "
                "to compute them from; add ZOO/saes/<id>/latents/cards.json or rebuild the zoo."
            )
        return discover_cohorts(root)

    def _compute(self) -> None:
        from medseglens_core.analysis.cards import cards_from_stats
        from medseglens_core.analysis.diff import cohort_case_stats

        cohorts = self._cohorts()
        assert self.model is not None  # checked by _cohorts
        stats = cohort_case_stats(
            self.model.obj, self.sae.obj, cohorts, card=self.sae.card, max_slices=MAX_SLICES
        )
        cards = cards_from_stats(stats)
        paths = {p.name: p for ps in cohorts.values() for p in ps}
        top_cases = []
        for j in range(stats.d_sae):
            ranked = sorted(
                (
                    (float(s.mean_activation[i, j]), cohort, cid)
                    for cohort, s in stats.cohorts.items()
                    for i, cid in enumerate(s.case_ids)
                ),
                reverse=True,
            )
            top_cases.append(
                [
                    {"case_id": cid, "cohort": cohort, "path": str(paths.get(cid, "")), "mean": v}
                    for v, cohort, cid in ranked[:N_EXAMPLE_CASES]
                    if v > 0
                ]
            )
        self.dir.mkdir(parents=True, exist_ok=True)
        buf = self.dir / ".reference.npz"
        np.savez(buf, **{c: s.mean_active_code for c, s in stats.cohorts.items()})
        buf.replace(self.dir / "reference.npz")
        atomic_write_bytes(self.dir / "top_cases.json", json.dumps(top_cases).encode())
        atomic_write_bytes(self.dir / "cards.json", json.dumps(cards).encode())

    def card(self, latent: int) -> tuple[dict[str, Any], str]:
        """One latent's card (404 problem when ``latent`` >= d_sae)."""
        cards, source = self.cards()
        if not 0 <= latent < len(cards):
            raise ResourceNotFound(
                f"SAE {self.sae.id!r} has {len(cards)} latents; choose 0..{len(cards) - 1}."
            )
        return cards[latent], source

    def examples_png(self, latent: int) -> bytes:
        """PNG of the latent's strongest examples, its activation map over each slice (cached on disk)."""
        card, source = self.card(latent)
        out = self.dir / "examples" / f"heat-{latent}.png"
        if out.is_file():
            return out.read_bytes()
        if source == "computed" and not card.get("top_examples"):
            wanted = [
                {"case_id": t["case_id"], "cohort": t["cohort"], "path": t["path"]}
                for t in json.loads((self.dir / "top_cases.json").read_text())[latent]
            ]
        else:
            wanted = list(card.get("top_examples") or [])[:N_EXAMPLE_CASES]
        panels = [p for p in (self._panel(latent, ex) for ex in wanted) if p is not None]
        note = None if self.model is not None else f"model {self.sae.card.get('model_id')!r} is not loaded"
        data = examples_png(panels, f"{self.sae.id}  latent {latent}", note=note)
        atomic_write_bytes(out, data)
        return data

    def _panel(self, latent: int, ex: dict[str, Any]) -> ExamplePanel | None:
        """The example's slice with the latent's map on it: slice ``ex["z"]``, or (no ``z``) the
        case's slice where the latent is strongest. None when the case or slice is not there."""
        import torch

        from medseglens_core.analysis.encode import encode_maps, resolve_hook
        from medseglens_core.data.preprocess import prepare_case
        from medseglens_core.io import load_case

        path = ex.get("path") or self._find_case(ex.get("case_id"))
        if self.model is None or not path or not Path(path).is_dir():
            return None
        model = self.model.obj
        case = load_case(Path(path), cohort=ex.get("cohort"))
        prepared = prepare_case(case, model.cfg.input_size)
        z0, depth = prepared.record.crop[4], prepared.slices.shape[0]
        ks = range(depth) if ex.get("z") is None else [int(ex["z"]) - z0]
        if not all(0 <= k < depth for k in ks):
            return None
        with torch.no_grad():
            x = prepared.slices[list(ks)].to(next(model.parameters()).device)
            codes = encode_maps(self.sae.obj, model.run_prefix(x, resolve_hook(model, None, self.sae.card)).h)
            codes = codes[:, latent].float().cpu()  # (len(ks), h, w): rows x, columns y as the slice
        i = int(torch.argmax(codes.flatten(1).amax(1)))
        return ExamplePanel(
            slice=prepared.slices[ks[i], 3].numpy(),  # FLAIR (t2f)
            heat=upsample(codes[i].numpy(), prepared.slices.shape[-1]),
            case_id=case.case_id,
            cohort=ex.get("cohort") or case.cohort,
            z=ks[i] + z0,
            value=float(codes[i].max()),
        )

    def _find_case(self, case_id: str | None) -> str | None:
        root = data_root(self.zoo)
        if root is None or not case_id:
            return None
        for hit in root.rglob(case_id):
            if hit.is_dir():
                return str(hit)
        return None


@dataclass(frozen=True)
class ExamplePanel:
    """One example of a latent: an axial slice and the latent's map on the same grid.

    Attributes:
        slice: ``(S, S)`` model-grid slice ``[x, y]`` (FLAIR, z-scored), drawn x right, y up.
        heat: ``(S, S)`` the latent's activation on that slice, upsampled from the hook grid.
        case_id, cohort, z: where it comes from (``z``: axial index of the RAS grid).
        value: the latent's strongest activation on the slice (hook grid, before upsampling).
    """

    slice: np.ndarray
    heat: np.ndarray
    case_id: str
    cohort: str | None
    z: int
    value: float


PANEL_INCHES = 2.3  # side of one panel
TITLE_POINTS = 8
TITLE_CHARS = 24  # case ids longer than this are shortened in the middle, so titles never meet
HEAT_FLOOR = 0.1  # heat below this fraction of the figure's maximum is left transparent


def upsample(codes: np.ndarray, size: int) -> np.ndarray:
    """A hook-grid map ``(h, w)`` bilinearly resized to ``(size, size)`` (token centres kept), >= 0."""
    import torch
    import torch.nn.functional as F

    t = torch.as_tensor(np.asarray(codes, dtype=np.float32))[None, None]
    return (
        F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].clamp_min(0).numpy()
    )


def _short(text: str, n: int = TITLE_CHARS) -> str:
    return text if len(text) <= n else text[: n // 2 - 1] + "\N{HORIZONTAL ELLIPSIS}" + text[-(n - n // 2) :]


def examples_figure(
    panels: list[ExamplePanel], title: str, *, vmax: float | None = None, note: str | None = None
) -> Any:
    """Figure of one row of panels: grey slice, the latent's map as a semi-transparent heat overlay
    (transparent where it does not fire), a two-line title per panel (case id; cohort, z, maximum)
    and one colour bar shared by all panels (``vmax``: its top; default the panels' maximum)."""
    from medseglens_core.reports import plots  # selects the Agg backend

    plt = plots.plt
    n = max(len(panels), 1)
    fig, axes = plt.subplots(
        1, n, figsize=(PANEL_INCHES * n + 0.8, PANEL_INCHES + 0.9), squeeze=False, layout="constrained"
    )
    top = vmax if vmax is not None else max((float(p.heat.max()) for p in panels), default=0.0)
    top = top if top > 0 else 1.0
    image = None
    for ax, p in zip(axes.flat, panels, strict=False):
        bg = np.asarray(p.slice, dtype=float)
        brain = bg != 0  # the slices are 0 outside the brain
        lo, hi = np.percentile(bg[brain], [1, 99.5]) if brain.any() else (0.0, 1.0)
        bg = np.where(brain, bg, lo)  # black outside the brain, without a rim where it meets the brain
        ax.imshow(
            bg.T, origin="lower", cmap="gray", vmin=lo, vmax=max(hi, lo + 1e-6), interpolation="bilinear"
        )
        heat = np.asarray(p.heat, dtype=float)
        alpha = np.where(heat > HEAT_FLOOR * top, np.clip(0.2 + 0.65 * heat / top, 0, 0.85), 0.0)
        image = ax.imshow(
            heat.T, origin="lower", cmap="inferno", vmin=0, vmax=top, alpha=alpha.T, interpolation="nearest"
        )
        ax.set_title(
            f"{_short(p.case_id)}\n{p.cohort or 'no cohort'} · z={p.z} · max {p.value:.2g}",
            fontsize=TITLE_POINTS,
        )
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    if image is not None:
        fig.colorbar(image, ax=axes[0, -1], fraction=0.08, pad=0.03, label="activation")
    else:
        axes[0, 0].set_axis_off()
        axes[0, 0].text(0.5, 0.5, note or "the latent fires on\nno held-out case", ha="center", va="center")
    fig.suptitle(f"{title}: top cases by mean activation (FLAIR)", fontsize=TITLE_POINTS + 1)
    return fig


def examples_png(
    panels: list[ExamplePanel], title: str, *, vmax: float | None = None, note: str | None = None
) -> bytes:
    """:func:`examples_figure` as PNG bytes (100 dpi, the figure's own size: panels stay in place)."""
    import io

    from medseglens_core.reports.plots import plt

    fig = examples_figure(panels, title, vmax=vmax, note=note)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
