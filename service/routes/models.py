"""Catalog of resident models and SAEs (their cards)."""

from __future__ import annotations

from fastapi import APIRouter

from service.deps import CatalogId, PoolDep, ReadKey
from service.errors import ResourceNotFound, problem_responses, problem_statuses
from service.pool import Resident
from service.schemas.catalog import CatalogEntry, CatalogList

router = APIRouter(tags=["models"])


def _entry(item: Resident) -> CatalogEntry:
    return CatalogEntry(id=item.id, device=item.device, card=item.card)


@router.get("/models", response_model=CatalogList, responses=problem_responses(*problem_statuses()))
def list_models(_key: ReadKey, pool: PoolDep) -> CatalogList:
    """Segmentation models resident in this process, by id."""
    return CatalogList(items=[_entry(m) for _, m in sorted(pool.models.items())])


@router.get(
    "/models/{model_id}", response_model=CatalogEntry, responses=problem_responses(*problem_statuses((404,)))
)
def get_model(_key: ReadKey, model_id: CatalogId, pool: PoolDep) -> CatalogEntry:
    """One model's card (architecture, hook points, input spec, training cohorts, Dice per cohort)."""
    item = pool.models.get(model_id)
    if item is None:
        raise ResourceNotFound(f"No model {model_id!r}; list models with GET /v1/models.")
    return _entry(item)


@router.get("/saes", response_model=CatalogList, responses=problem_responses(*problem_statuses()))
def list_saes(_key: ReadKey, pool: PoolDep) -> CatalogList:
    """Sparse autoencoders resident in this process, by id."""
    return CatalogList(items=[_entry(s) for _, s in sorted(pool.saes.items())])


@router.get(
    "/saes/{sae_id}", response_model=CatalogEntry, responses=problem_responses(*problem_statuses((404,)))
)
def get_sae(_key: ReadKey, sae_id: CatalogId, pool: PoolDep) -> CatalogEntry:
    """One SAE's card and training metrics."""
    item = pool.saes.get(sae_id)
    if item is None:
        raise ResourceNotFound(f"No SAE {sae_id!r}; list SAEs with GET /v1/saes.")
    return _entry(item)
