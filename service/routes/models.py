"""Catalog of resident models and SAEs (their cards)."""

from __future__ import annotations

from fastapi import APIRouter

from service.deps import CatalogId, PoolDep, ReadKey
from service.errors import problem_responses, problem_statuses
from service.pool import Resident, Unavailable
from service.schemas.catalog import ModelEntry, ModelList, SaeEntry, SaeList, UnavailableEntry

router = APIRouter(tags=["models"])


def _model_entry(item: Resident) -> ModelEntry:
    card = item.card
    cohorts = card.get("training_cohorts") or card.get("training", {}).get("cohorts") or []
    return ModelEntry(
        id=item.id,
        architecture=str(card.get("architecture", "")),
        hook_points=list(card.get("hook_points", [])),
        default_hook=card.get("default_hook"),
        training_cohorts=list(cohorts),
        device=item.device,
        card=card,
    )


def _sae_entry(item: Resident) -> SaeEntry:
    card = item.card
    return SaeEntry(
        id=item.id,
        model_id=card.get("model_id"),
        hook=card.get("hook"),
        architecture=card.get("architecture"),
        d_in=card.get("d_in"),
        d_sae=card.get("d_sae"),
        k=card.get("k"),
        device=item.device,
        card=card,
    )


def _unavailable_entry(item: Unavailable) -> UnavailableEntry:
    model_id = item.card.get("model_id") if item.kind == "sae" else None
    return UnavailableEntry(id=item.id, model_id=str(model_id) if model_id else None, error=item.error)


@router.get("/models", response_model=ModelList, responses=problem_responses(*problem_statuses()))
def list_models(_key: ReadKey, pool: PoolDep) -> ModelList:
    """Segmentation models resident in this process, by id; broken zoo entries under `unavailable`."""
    return ModelList(
        items=[_model_entry(m) for _, m in sorted(pool.models.items())],
        unavailable=[_unavailable_entry(u) for u in pool.unavailable_of("model")],
    )


@router.get(
    "/models/{model_id}",
    response_model=ModelEntry,
    responses=problem_responses(*problem_statuses((404, 503))),
)
def get_model(_key: ReadKey, model_id: CatalogId, pool: PoolDep) -> ModelEntry:
    """One model's card (architecture, hook points, input spec, training cohorts, Dice per cohort).

    503 ``zoo-entry-unavailable`` when the model is in the zoo but its files are broken.
    """
    return _model_entry(pool.require_model(model_id))


@router.get("/saes", response_model=SaeList, responses=problem_responses(*problem_statuses()))
def list_saes(_key: ReadKey, pool: PoolDep, model_id: str | None = None) -> SaeList:
    """Sparse autoencoders resident in this process, by id; `model_id` keeps those of one model.

    SAEs in the zoo that failed to load (a corrupted weights file, say) are listed under
    `unavailable` with their error, not in `items`.
    """
    items = [_sae_entry(s) for _, s in sorted(pool.saes.items())]
    broken = [_unavailable_entry(u) for u in pool.unavailable_of("sae")]
    return SaeList(
        items=[e for e in items if model_id is None or e.model_id == model_id],
        unavailable=[e for e in broken if model_id is None or e.model_id == model_id],
    )


@router.get(
    "/saes/{sae_id}", response_model=SaeEntry, responses=problem_responses(*problem_statuses((404, 503)))
)
def get_sae(_key: ReadKey, sae_id: CatalogId, pool: PoolDep) -> SaeEntry:
    """One SAE's card and training metrics; 503 ``zoo-entry-unavailable`` when its files are broken."""
    return _sae_entry(pool.require_sae(sae_id))
