"""Loading what interventions need from a zoo and a data folder (paths in, objects out).

Zoo layout: ``ZOO/models/<model_id>/`` (``load_model``) and ``ZOO/saes/<sae_id>/``
(``load_sae``, card ``model_id`` + ``hook``). Data layout: ``DATA/<cohort>/`` of case folders
(``find_cases``; a ``test`` split is preferred when present). Which SAE is a model's main or
gate SAE, and which split is read, is the zoo catalogue's rule (:mod:`medseglens_core.catalog`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medseglens_core.catalog import Catalog, cohort_case_root
from medseglens_core.interventions.cache import PrefixCache
from medseglens_core.interventions.errors import CohortMissing, ZooEntryMissing
from medseglens_core.interventions.search import VolumeItem


def load_model_dir(zoo: Path, model_id: str) -> tuple[Any, dict[str, Any]]:
    """``(model, card)`` of ``ZOO/models/<model_id>``, in eval mode on the CPU."""
    from medseglens_core.models.card import load_model

    mdir = Path(zoo) / "models" / model_id
    if not (mdir / "card.json").is_file():
        have = sorted(p.name for p in (Path(zoo) / "models").glob("*") if (p / "card.json").is_file())
        raise ZooEntryMissing(f"no model {model_id!r} under ZOO/models; available: {have}")
    model, card = load_model(mdir)
    return model.eval(), card


def load_sae_for(zoo: Path, model_id: str, sae_id: str | None = None) -> tuple[Any, dict[str, Any]]:
    """The SAE ``sae_id`` (checked to belong to ``model_id``), or the model's main SAE
    (:meth:`~medseglens_core.catalog.Catalog.main_sae`)."""
    from medseglens_core.sae.io import load_sae

    catalog = Catalog.read(zoo)
    if sae_id is None:
        main = catalog.main_sae(model_id)
        if main is None or main.path is None:
            raise ZooEntryMissing(f"model {model_id!r} has no SAE under ZOO/saes (card model_id); train one")
        sdir = main.path
    else:
        sdir = Path(zoo) / "saes" / sae_id
        if not (sdir / "card.json").is_file():
            raise ZooEntryMissing(f"no SAE {sae_id!r} under ZOO/saes")
    sae, card = load_sae(sdir)
    model = catalog.model(model_id)
    names = model.names if model is not None else (model_id,)
    if str(card.get("model_id")) not in names:
        raise ZooEntryMissing(
            f"SAE {sdir.name!r} was trained on model {card.get('model_id')!r}, not {model_id!r}; pick its SAE"
        )
    return sae.eval(), card


def gate_sae_id(zoo: Path, model_id: str) -> str | None:
    """The id of ``model_id``'s gate SAE (card ``role: gate``, read by population gates), if any
    (:meth:`~medseglens_core.catalog.Catalog.gate_sae`)."""
    gate = Catalog.read(zoo).gate_sae(model_id)
    return gate.sae_id if gate is not None else None


def load_gate_sae(zoo: Path, model_id: str, sae_id: str | None = None) -> tuple[Any, str | None, str | None]:
    """``(sae, hook, id)`` of the SAE a population gate reads: ``sae_id``, else the model's SAE
    with ``role: gate`` (:func:`gate_sae_id`); ``(None, None, None)`` when there is none."""
    sid = sae_id or gate_sae_id(zoo, model_id)
    if sid is None:
        return None, None, None
    sae, card = load_sae_for(zoo, model_id, sid)
    return sae, card.get("hook"), str(card.get("id", sid))


def source_cohort(card: dict[str, Any]) -> str:
    """The cohort a model was trained on: ``card['training']['cohorts'][0]`` (or top-level keys)."""
    training = card.get("training") if isinstance(card.get("training"), dict) else {}
    for value in (training.get("cohorts"), card.get("training_cohorts"), card.get("cohorts")):
        if isinstance(value, list) and value:
            return str(value[0])
        if isinstance(value, str) and value:
            return value
    raise CohortMissing("the model card names no training cohort; cannot tell the source cohort")


def cohort_cases(data: Path, cohort: str) -> list[Path]:
    """Sorted case folders of ``DATA/<cohort>`` (its ``test`` split when it has one:
    :func:`~medseglens_core.catalog.cohort_case_root`)."""
    from medseglens_core.io import find_cases

    if not (Path(data) / cohort).is_dir():
        have = sorted(p.name for p in Path(data).iterdir() if p.is_dir()) if Path(data).is_dir() else []
        raise CohortMissing(f"cohort folder {cohort!r} is missing from the data folder (has: {have})")
    cases = find_cases(cohort_case_root(data, cohort))
    if not cases:
        raise CohortMissing(f"no case folders under data/{cohort}; expect <case_id>/<case_id>-t1n.nii.gz ...")
    return cases


def load_items(
    model: Any,
    hook: str,
    paths: Sequence[Path],
    cohort: str,
    *,
    batch_size: int = 16,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> list[VolumeItem]:
    """Load, prepare and prefix-cache each case folder (labels kept when present)."""
    from medseglens_core.data.preprocess import prepare_case
    from medseglens_core.io import load_case

    items = []
    for n, path in enumerate(paths):
        case = load_case(path, cohort=cohort)
        prepared = prepare_case(case, model.cfg.input_size)
        cache = PrefixCache.build(model, prepared, hook, batch_size=batch_size)
        spacing = tuple(float(s) for s in case.geometry.spacing)
        items.append(VolumeItem(case.case_id, cohort, cache, case.label, spacing))
        if progress is not None:
            progress({"stage": "load", "cohort": cohort, "case": n + 1, "of": len(paths)})
    return items
