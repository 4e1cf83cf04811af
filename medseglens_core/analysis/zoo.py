"""Finding models, their SAEs and cohort case folders for a diff report.

Zoo layout (docs/ARCHITECTURE.md): ``ZOO/models/<model_id>/card.json`` and
``ZOO/saes/<sae_id>/card.json`` whose ``model_id`` names the model it was trained on.
An SAE card with a string ``cohort`` field is a per-cohort SAE (used only for cross-cohort
decoder alignment); among the other SAEs of a model the main one is the SAE whose card lists the
most ``cohorts`` (ties: first by id).

Data layout: ``DATA/<cohort>/`` holds case folders, directly or under ``train/val/test``; when a
``test`` split exists only it is used (the models never saw those cases).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseglens_core.errors import InvalidInput, NotFound


@dataclass
class ZooEntry:
    """One model with its main SAE and per-cohort SAEs (``{cohort: sae_dir}``)."""

    model_id: str
    model_dir: Path
    model_card: dict[str, Any]
    sae_id: str
    sae_dir: Path
    sae_card: dict[str, Any]
    cohort_saes: dict[str, Path] = field(default_factory=dict)

    @property
    def source_cohort(self) -> str | None:
        """The cohort the model was trained on (first of the card's training cohorts), if stated."""
        for key in ("training_cohorts", "cohorts", "train_cohorts"):
            value = self.model_card.get(key)
            if isinstance(value, list) and value:
                return str(value[0])
            if isinstance(value, str):
                return value
        return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidInput(
            f"cannot read {path.parent.name}/{path.name} ({exc}); restore or rebuild it"
        ) from exc


def discover_zoo(zoo_dir: Path | str) -> list[ZooEntry]:
    """Models of ``zoo_dir`` that have at least one SAE, sorted by model id."""
    zoo = Path(zoo_dir)
    if not (zoo / "models").is_dir() or not (zoo / "saes").is_dir():
        raise NotFound(
            f"{zoo.name!r} is not a zoo: it needs models/ and saes/ sub-folders (run `medseglens zoo build`)"
        )
    saes: dict[str, list[tuple[str, Path, dict]]] = {}
    for d in sorted(p for p in (zoo / "saes").iterdir() if (p / "card.json").is_file()):
        card = _read_json(d / "card.json")
        if card.get("model_id"):
            saes.setdefault(str(card["model_id"]), []).append((d.name, d, card))
    out = []
    for d in sorted(p for p in (zoo / "models").iterdir() if (p / "card.json").is_file()):
        card = _read_json(d / "card.json")
        model_id = str(card.get("id", d.name))
        found = saes.get(model_id, []) + (saes.get(d.name, []) if d.name != model_id else [])
        # per-cohort SAEs and gate-only SAEs (role "gate", read by population gates) are not main
        main = [s for s in found if not isinstance(s[2].get("cohort"), str) and s[2].get("role") != "gate"]
        if not main:
            continue
        per_cohort = {str(s[2]["cohort"]): s[1] for s in found if isinstance(s[2].get("cohort"), str)}
        main.sort(key=lambda s: (-len(s[2].get("cohorts") or []), s[0]))
        sid, sdir, scard = main[0]
        out.append(ZooEntry(model_id, d, card, sid, sdir, scard, per_cohort))
    if not out:
        raise NotFound(
            f"no model in {zoo.name!r} has an SAE (saes/<id>/card.json with model_id); train one first"
        )
    return out


def discover_cohorts(data_dir: Path | str, max_cases: int | None = None) -> dict[str, list[Path]]:
    """``{cohort: sorted case folders}`` for each sub-folder of ``data_dir`` that holds cases."""
    from medseglens_core.io import find_cases

    root = Path(data_dir)
    if not root.is_dir():
        raise NotFound(
            f"data directory {root.name!r} does not exist; pass a folder with one sub-folder per cohort"
        )
    out: dict[str, list[Path]] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        base = sub / "test" if (sub / "test").is_dir() else sub
        cases = find_cases(base)
        if cases:
            out[sub.name] = cases[:max_cases] if max_cases else cases
    if not out:
        raise NotFound(
            f"no case folders under {root.name!r}; expect <cohort>/<case_id>/<case_id>-t1n.nii.gz ..."
        )
    return out
