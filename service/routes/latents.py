"""Latent cards of resident SAEs: ``/v1/saes/{sae_id}/latents/{latent}`` (JSON) and its examples PNG."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import Response

from service.deps import CatalogId, PoolDep, ReadKey, SettingsDep
from service.errors import problem_responses, problem_statuses
from service.latent_cards import CardStore
from service.pool import ModelPool
from service.routes.segmentations import PNG
from service.schemas.latents import LatentCard

router = APIRouter(prefix="/saes", tags=["models"])

LatentIndex = Annotated[int, Path(ge=0, le=1_000_000, description="Latent index, < d_sae (else 404).")]


def card_store(pool: ModelPool, settings: SettingsDep, sae_id: str) -> CardStore:
    """The card store of the resident SAE ``sae_id`` (404 when unknown, 503 when broken in the zoo)."""
    sae = pool.require_sae(sae_id)
    model = pool.models.get(str(sae.card.get("model_id")))
    return CardStore(settings.zoo_dir, settings.data_dir / "cache", sae, model)


@router.get(
    "/{sae_id}/latents/{latent}",
    response_model=LatentCard,
    responses=problem_responses(*problem_statuses((404, 503))),
)
async def get_latent_card(
    _key: ReadKey, sae_id: CatalogId, latent: LatentIndex, pool: PoolDep, settings: SettingsDep
) -> LatentCard:
    """Firing rate and mean activation per cohort, and region association, of one latent.

    From the SAE directory's cards when it ships them; otherwise computed once from the zoo's data
    and cached (the first call may take a while). 404 when latent >= d_sae or no cards can be had.
    """
    store = card_store(pool, settings, sae_id)
    card, source = await pool.run(store.card, latent, kind="latent_cards")
    return LatentCard(
        sae_id=sae_id,
        latent=latent,
        source=source,
        firing_rate=card.get("firing_rate", {}),
        mean_activation=card.get("mean_activation", {}),
        n_cases=card.get("n_cases", {}),
        region=card.get("region", {}),
        top_examples=card.get("top_examples", []),
    )


@router.get(
    "/{sae_id}/latents/{latent}/examples.png",
    response_class=Response,
    responses={**PNG, **problem_responses(*problem_statuses((404, 503)))},
)
async def get_latent_examples(
    _key: ReadKey, sae_id: CatalogId, latent: LatentIndex, pool: PoolDep, settings: SettingsDep
) -> Response:
    """FLAIR crops of the latent's strongest examples with the firing token marked (PNG)."""
    store = card_store(pool, settings, sae_id)
    png = await pool.run(store.examples_png, latent, kind="latent_cards")
    return Response(png, media_type="image/png")
