"""Finding models, their SAEs and cohort case folders for a diff report.

Which SAE is a model's main SAE, which are per-cohort or gate SAEs, and which split of a data
folder is read, is the zoo catalogue's rule (:mod:`medseglens_core.catalog`); this module turns
it into the entries a diff report iterates over.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseglens_core.catalog import Catalog, cohort_case_root
from medseglens_core.errors import NotFound


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


def discover_zoo(zoo_dir: Path | str) -> list[ZooEntry]:
    """Models of ``zoo_dir`` that have a main SAE (:meth:`Catalog.main_sae`), sorted by model id.

    Raises :class:`InvalidInput` on an unreadable card and :class:`NotFound` when ``zoo_dir`` is
    not a zoo or no model has a main SAE.
    """
    zoo = Path(zoo_dir)
    if not (zoo / "models").is_dir() or not (zoo / "saes").is_dir():
        raise NotFound(
            f"{zoo.name!r} is not a zoo: it needs models/ and saes/ sub-folders (run `medseglens zoo build`)"
        )
    catalog = Catalog.read(zoo, strict=True)
    out = []
    for m in catalog.models:
        main = catalog.main_sae(m.model_id)
        if main is None or main.path is None:
            continue
        per_cohort = {c: s.path for c, s in catalog.cohort_saes(m.model_id).items() if s.path is not None}
        model_id = str(m.card.get("id", m.model_id))
        out.append(
            ZooEntry(model_id, m.path, dict(m.card), main.sae_id, main.path, dict(main.card), per_cohort)
        )
    if not out:
        raise NotFound(
            f"no model in {zoo.name!r} has an SAE (saes/<id>/card.json with model_id); train one first"
        )
    return out


def discover_cohorts(data_dir: Path | str, max_cases: int | None = None) -> dict[str, list[Path]]:
    """``{cohort: sorted case folders}`` for each sub-folder of ``data_dir`` that holds cases
    (its ``test`` split when it has one: :func:`~medseglens_core.catalog.cohort_case_root`)."""
    from medseglens_core.io import find_cases

    root = Path(data_dir)
    if not root.is_dir():
        raise NotFound(
            f"data directory {root.name!r} does not exist; pass a folder with one sub-folder per cohort"
        )
    out: dict[str, list[Path]] = {}
    for sub in sorted(p for p in root.iterdir() if p.is_dir()):
        cases = find_cases(cohort_case_root(root, sub.name))
        if cases:
            out[sub.name] = cases[:max_cases] if max_cases else cases
    if not out:
        raise NotFound(
            f"no case folders under {root.name!r}; expect <cohort>/<case_id>/<case_id>-t1n.nii.gz ..."
        )
    return out
