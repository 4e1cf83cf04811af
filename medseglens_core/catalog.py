"""The zoo catalogue: the one rule for a model's main SAE, its gate SAE and the data splits.

Everything that reads a zoo (CLI, HTTP defaults, jobs, diff reports, latent cards) asks this
module, so they all pick the same SAE and the same cases.

SAEs. ``ZOO/saes/<sae_id>/card.json`` names the model it was trained on (``model_id``, the model
card's ``id`` or its folder name) and its ``hook``. Its role is read from the card, never from
the id order:

- ``role: "gate"``: read only by population gates (:func:`gate_sae`); never the main SAE.
- a string ``cohort``: a per-cohort SAE (cross-cohort decoder alignment only); never the main SAE.
- anything else (no ``role``, or ``role: "steering"``): a steering SAE. The model's main SAE is
  the steering SAE at the model card's ``default_hook``, then the one whose card lists the most
  ``cohorts``, then the first by id (:func:`main_sae`).

Data splits. The zoo keeps ``ZOO/data/{train,val,test}/<cohort>/<case_id>/`` (:func:`data_split`);
models never saw ``test``, so reports, recovery and latent cards read it (:func:`test_data_dir`).
A user's data folder is ``DATA/<cohort>/`` of case folders, or ``DATA/<cohort>/test/`` when it is
split; the ``test`` split is then the only one read (:func:`cohort_case_root`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseglens_core.errors import InvalidInput

SPLITS = ("train", "val", "test")
HELD_OUT = "test"
GATE, PER_COHORT, STEERING = "gate", "cohort", "steering"


def sae_role(card: Mapping[str, Any]) -> str:
    """``"gate"``, ``"cohort"`` (per-cohort SAE) or ``"steering"`` for an SAE card."""
    if card.get("role") == GATE:
        return GATE
    if isinstance(card.get("cohort"), str):
        return PER_COHORT
    return STEERING


@dataclass(frozen=True)
class SaeRef:
    """One SAE of a zoo: its id (folder name), card and folder (None for cards held elsewhere)."""

    sae_id: str
    card: Mapping[str, Any]
    path: Path | None = None

    @property
    def model_id(self) -> str:
        return str(self.card.get("model_id") or "")

    @property
    def hook(self) -> str | None:
        hook = self.card.get("hook")
        return str(hook) if hook else None

    @property
    def role(self) -> str:
        return sae_role(self.card)


@dataclass(frozen=True)
class ModelRef:
    """One segmentation model of a zoo: its id (folder name), card and folder."""

    model_id: str
    card: Mapping[str, Any]
    path: Path

    @property
    def names(self) -> tuple[str, ...]:
        """The ids an SAE card's ``model_id`` may use for this model: its folder and its card ``id``."""
        card_id = str(self.card.get("id") or self.model_id)
        return (self.model_id,) if card_id == self.model_id else (card_id, self.model_id)


def _own(saes: Iterable[SaeRef], names: tuple[str, ...], role: str) -> list[SaeRef]:
    return sorted((s for s in saes if s.model_id in names and s.role == role), key=lambda s: s.sae_id)


def main_sae(
    saes: Iterable[SaeRef], model_id: str | tuple[str, ...], model_card: Mapping[str, Any] | None = None
) -> SaeRef | None:
    """The model's main (steering) SAE by the module's rule, or None when it has none.

    Args:
        saes: candidate SAEs (any model's; others are ignored).
        model_id: the model's id, or every name it goes by (:attr:`ModelRef.names`).
        model_card: the model's card; its ``default_hook`` ranks first.
    """
    names = (model_id,) if isinstance(model_id, str) else tuple(model_id)
    default_hook = (model_card or {}).get("default_hook")
    ranked = sorted(
        _own(saes, names, STEERING),
        key=lambda s: (
            default_hook is None or s.hook != default_hook,
            -len(s.card.get("cohorts") or []),
            s.sae_id,
        ),
    )
    return ranked[0] if ranked else None


def gate_sae(saes: Iterable[SaeRef], model_id: str | tuple[str, ...]) -> SaeRef | None:
    """The model's SAE with ``role: gate`` (first by id when several), or None."""
    names = (model_id,) if isinstance(model_id, str) else tuple(model_id)
    found = _own(saes, names, GATE)
    return found[0] if found else None


def cohort_saes(saes: Iterable[SaeRef], model_id: str | tuple[str, ...]) -> dict[str, SaeRef]:
    """``{cohort: SAE}`` of the model's per-cohort SAEs."""
    names = (model_id,) if isinstance(model_id, str) else tuple(model_id)
    return {str(s.card["cohort"]): s for s in _own(saes, names, PER_COHORT)}


def read_card(path: Path) -> dict[str, Any]:
    """A card file as a dict (:class:`InvalidInput` naming the file when it cannot be read)."""
    try:
        card = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(
            f"cannot read {path.parent.name}/{path.name} ({exc}); restore or rebuild it"
        ) from exc
    if not isinstance(card, dict):
        raise InvalidInput(f"{path.parent.name}/{path.name} is not a JSON object; restore or rebuild it")
    return card


@dataclass(frozen=True)
class Catalog:
    """The models and SAEs of one zoo folder, read once (folders without ``card.json`` are skipped).

    ``unreadable`` maps ``"models/<id>"`` / ``"saes/<id>"`` to why its card could not be read.
    """

    zoo: Path
    models: tuple[ModelRef, ...]
    saes: tuple[SaeRef, ...]
    unreadable: Mapping[str, str]

    @classmethod
    def read(cls, zoo: str | Path, *, strict: bool = False) -> Catalog:
        """Read ``ZOO/models/*/card.json`` and ``ZOO/saes/*/card.json``.

        ``strict``: raise :class:`InvalidInput` on the first unreadable card instead of listing it
        in ``unreadable``. Entries starting with ``.`` (staging folders) are never read.
        """
        root = Path(zoo)
        found: dict[str, list[tuple[str, Path, dict[str, Any]]]] = {"models": [], "saes": []}
        bad: dict[str, str] = {}
        for kind, items in found.items():
            folder = root / kind
            entries = sorted(folder.iterdir()) if folder.is_dir() else []
            for d in entries:
                if d.name.startswith(".") or not (d / "card.json").is_file():
                    continue
                try:
                    items.append((d.name, d, read_card(d / "card.json")))
                except InvalidInput as exc:
                    if strict:
                        raise
                    bad[f"{kind}/{d.name}"] = str(exc)
        return cls(
            root,
            tuple(ModelRef(n, c, p) for n, p, c in found["models"]),
            tuple(SaeRef(n, c, p) for n, p, c in found["saes"]),
            bad,
        )

    def model(self, model_id: str) -> ModelRef | None:
        """The model with folder name or card id ``model_id``."""
        for m in self.models:
            if model_id in m.names:
                return m
        return None

    def sae(self, sae_id: str) -> SaeRef | None:
        """The SAE with folder name ``sae_id``."""
        return next((s for s in self.saes if s.sae_id == sae_id), None)

    def _names(self, model_id: str) -> tuple[str, ...]:
        m = self.model(model_id)
        return m.names if m is not None else (model_id,)

    def main_sae(self, model_id: str) -> SaeRef | None:
        """The model's main SAE (:func:`main_sae`)."""
        m = self.model(model_id)
        return main_sae(self.saes, self._names(model_id), m.card if m is not None else None)

    def gate_sae(self, model_id: str) -> SaeRef | None:
        """The model's gate SAE (:func:`gate_sae`)."""
        return gate_sae(self.saes, self._names(model_id))

    def cohort_saes(self, model_id: str) -> dict[str, SaeRef]:
        """The model's per-cohort SAEs (:func:`cohort_saes`)."""
        return cohort_saes(self.saes, self._names(model_id))


def data_split(zoo: str | Path, cohort: str, split: str) -> Path:
    """Folder of one cohort's split inside a zoo: ``ZOO/data/<split>/<cohort>``."""
    return split_dir(zoo, split) / cohort


def split_dir(zoo: str | Path, split: str) -> Path:
    """A zoo's split folder ``ZOO/data/<split>`` (one sub-folder per cohort)."""
    if split not in SPLITS:
        raise InvalidInput(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    return Path(zoo) / "data" / split


def train_data_dir(zoo: str | Path) -> Path:
    """The zoo's training cases, one sub-folder per cohort (what SAE training jobs read)."""
    return split_dir(zoo, "train")


def test_data_dir(zoo: str | Path) -> Path:
    """The zoo's held-out cases, one sub-folder per cohort (diff reports, recovery, latent cards)."""
    return split_dir(zoo, HELD_OUT)


def held_out_data(zoo: str | Path) -> Path | None:
    """The folder of per-cohort case folders that reports and latent cards read from a zoo.

    ``ZOO/data/test`` when it holds a cohort folder, else ``ZOO/data`` (a zoo whose data is not
    split) when it does; None when neither does.
    """
    for candidate in (test_data_dir(zoo), Path(zoo) / "data"):
        if candidate.is_dir() and any(p.is_dir() and p.name not in SPLITS for p in candidate.iterdir()):
            return candidate
    return None


def cohort_case_root(data: str | Path, cohort: str) -> Path:
    """Where ``DATA/<cohort>``'s cases are: its ``test`` split when it has one, else the folder."""
    root = Path(data) / cohort
    return root / HELD_OUT if (root / HELD_OUT).is_dir() else root
