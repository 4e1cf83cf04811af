"""Latent cards of resident SAEs, and the cohort statistics ``patch`` interventions need.

Cards come from the SAE directory when it ships them (``ZOO/saes/<id>/latents/cards.json`` or
``ZOO/saes/<id>/cards.json``, written by ``analysis.cards.write_cards``). Otherwise they are
computed once, lazily, from the zoo's data (``ZOO/data/test/<cohort>/``, else ``ZOO/data/<cohort>/``)
with ``analysis.diff.cohort_case_stats`` + ``analysis.cards.cards_from_stats`` and cached under
``DATA_DIR/cache/latent-cards/<sae_id>-<weights sha prefix>/``::

    cards.json        one card per latent (firing rate, mean activation per cohort, regions)
    reference.npz     per cohort: mean code of each latent where it fires (``patch`` statistics)
    top_cases.json    per latent: the cases with the highest mean activation (for examples.png)
    examples/<j>.png  rendered example grids

Examples for computed cards are the strongest token of each of the latent's top cases, found on
first request of ``examples.png`` with one prefix pass per case.
"""

from __future__ import annotations

import json
import threading
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
    """``ZOO/data/test`` when present, else ``ZOO/data``; None when neither holds a folder."""
    for candidate in (zoo / "data" / "test", zoo / "data"):
        if candidate.is_dir() and any(p.is_dir() for p in candidate.iterdir()):
            return candidate
    return None


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
        """PNG grid of the latent's strongest examples (cached on disk)."""
        card, source = self.card(latent)
        out = self.dir / "examples" / f"{latent}.png"
        if out.is_file():
            return out.read_bytes()
        examples = card.get("top_examples") or []
        if not examples and source == "computed":
            examples = self._examples(latent)
        return self._render({**card, "top_examples": examples}, out)

    def _examples(self, latent: int) -> list[dict[str, Any]]:
        """Strongest token of each top case: ``{case_id, cohort, z, y, x, value}`` (core card format)."""
        import torch

        from medseglens_core.analysis.encode import encode_maps, resolve_hook
        from medseglens_core.data.preprocess import prepare_case
        from medseglens_core.io import load_case

        assert self.model is not None
        model = self.model.obj
        hook = resolve_hook(model, None, self.sae.card)
        top_cases = json.loads((self.dir / "top_cases.json").read_text())[latent]
        examples = []
        for item in top_cases:
            case = load_case(Path(item["path"]), cohort=item["cohort"])
            prepared = prepare_case(case, model.cfg.input_size)
            with torch.no_grad():
                h = model.run_prefix(prepared.slices.to(next(model.parameters()).device), hook).h
                codes = encode_maps(self.sae.obj, h)[:, latent]  # (Z', h, w)
            k, y, x = np.unravel_index(int(torch.argmax(codes)), tuple(codes.shape))
            examples.append(
                {
                    "case_id": case.case_id,
                    "cohort": item["cohort"],
                    "z": int(k) + prepared.record.crop[4],
                    "y": int(y),
                    "x": int(x),
                    "value": float(codes.max()),
                    "path": item["path"],
                }
            )
        return examples

    def _render(self, card: dict[str, Any], out: Path) -> bytes:
        from medseglens_core.analysis.cards import render_examples
        from medseglens_core.analysis.encode import resolve_hook
        from medseglens_core.io import load_case

        cases: dict[str, Any] = {}
        hook_size = 1
        if self.model is not None:
            model = self.model.obj
            for ex in card["top_examples"]:
                path = ex.get("path") or self._find_case(ex.get("case_id"))
                if path and ex["case_id"] not in cases:
                    cases[ex["case_id"]] = load_case(Path(path), cohort=ex.get("cohort"))
            import torch

            with torch.no_grad():
                hook = resolve_hook(model, None, self.sae.card)
                size = model.cfg.input_size
                device = next(model.parameters()).device
                hook_size = int(
                    model.run_prefix(torch.zeros(1, 4, size, size, device=device), hook).h.shape[-1]
                )
        size = self.model.obj.cfg.input_size if self.model is not None else 32
        tmp = out.with_name(f".{out.name}.tmp.png")
        render_examples(card, cases, size, hook_size, tmp)
        data = tmp.read_bytes()
        atomic_write_bytes(out, data)
        tmp.unlink(missing_ok=True)
        return data

    def _find_case(self, case_id: str | None) -> str | None:
        root = data_root(self.zoo)
        if root is None or not case_id:
            return None
        for hit in root.rglob(case_id):
            if hit.is_dir():
                return str(hit)
        return None
