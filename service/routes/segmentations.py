"""Segmentations: segment an uploaded volume, list/read them, download mask, latent maps, overlays."""

from __future__ import annotations

from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import FileResponse, Response
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from medseglens_core.catalog import SaeRef, main_sae
from service import segmenting
from service.deps import PoolDep, ReadKey, SegmentKey, ServerId, SessionDep, StorageDep
from service.errors import (
    MAX_OFFSET,
    Conflict,
    ResourceNotFound,
    ServiceError,
    problem_responses,
    problem_statuses,
    stored_artefact,
)
from service.models_db import Segmentation, Volume
from service.pool import ModelPool, Resident
from service.schemas.segmentations import SegmentationCreate, SegmentationOut, SegmentationPage
from service.storage import new_id

router = APIRouter(prefix="/segmentations", tags=["segmentations"])

GZIP_NIFTI = {
    200: {
        "content": {"application/gzip": {"schema": {"type": "string", "format": "binary"}}},
        "description": "Gzipped NIfTI-1 on the volume's original grid and affine.",
    }
}
PNG = {
    200: {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}, "description": "PNG."}
}


REDO_SEGMENTATION = "re-run the segmentation (POST /v1/segmentations) and use the new id"


class SaeModelMismatch(ServiceError):
    """The SAE was trained on another model's activations (422: the request is inconsistent)."""

    status, slug, title = 422, "sae-model-mismatch", "SAE does not belong to the model"


class SliceOutOfRange(ServiceError):
    """An overlay slice index beyond the volume's axial extent."""

    status, slug, title = 422, "slice-out-of-range", "Slice out of range"


def resident_model(pool: ModelPool, model_id: str) -> Resident:
    """The resident model ``model_id``: 404 when unknown, 503 when broken in the zoo."""
    return pool.require_model(model_id)


def resident_sae(pool: ModelPool, sae_id: str | None, model: Resident) -> Resident | None:
    """The SAE ``sae_id`` (404 unknown, 422 when trained on another model); None -> the model's main
    SAE by the zoo catalogue's rule (:func:`medseglens_core.catalog.main_sae`: the card's role, never
    a gate or per-cohort SAE), or None when it has no resident one."""
    if sae_id is None:
        refs = [SaeRef(s.id, s.card, s.path) for s in pool.saes.values()]
        main = main_sae(refs, model.id, model.card)
        return pool.saes[main.sae_id] if main is not None else None
    sae = pool.require_sae(sae_id)  # 404 unknown, 503 broken in the zoo
    if str(sae.card.get("model_id")) != model.id:
        raise SaeModelMismatch(
            f"SAE {sae_id!r} was trained on model {sae.card.get('model_id')!r}, not {model.id!r}; "
            "pick one of that model's SAEs (GET /v1/saes, card.model_id)."
        )
    return sae


def stored_volume(session: Any, volume_id: str) -> Volume:
    """The volume ``volume_id`` or a 404 problem."""
    volume = session.get(Volume, volume_id)
    if volume is None:
        raise ResourceNotFound(f"No volume {volume_id}; upload one with POST /v1/volumes.")
    return volume


def to_out(row: Segmentation) -> SegmentationOut:
    """The response schema of a stored segmentation."""
    s = row.summary
    return SegmentationOut(
        id=row.id,
        created=row.created,
        volume_id=row.volume_id,
        model_id=row.model_id,
        sae_id=row.sae_id,
        hook=s.get("hook"),
        region_volumes_ml=s["region_volumes_ml"],
        scores=s.get("scores"),
        top_latents=s.get("top_latents", []),
        timings=s.get("timings", {}),
        ood=s.get("ood"),
        provenance=s.get("provenance"),
    )


def segmentation_or_404(segmentation_id: ServerId, session: SessionDep) -> Segmentation:
    """The segmentation ``segmentation_id`` or a 404 problem."""
    row = session.get(Segmentation, segmentation_id)
    if row is None:
        raise ResourceNotFound(f"No segmentation {segmentation_id}; list them with GET /v1/segmentations.")
    return row


SegmentationDep = Annotated[Segmentation, Depends(segmentation_or_404)]


@router.post(
    "",
    status_code=201,
    response_model=SegmentationOut,
    responses=problem_responses(*problem_statuses((400, 404, 413, 503))),  # 503: zoo entry broken
)
async def create_segmentation(
    _key: SegmentKey, body: SegmentationCreate, session: SessionDep, storage: StorageDep, pool: PoolDep
) -> SegmentationOut:
    """Segment a volume (one network pass) and summarise the SAE's top-k latents.

    Stores the mask on the volume's original grid and caches the prefix activations so that an
    intervention on the same volume and model re-runs only the network after the hook point.
    The SAE must belong to the model (422 `sae-model-mismatch` otherwise).
    """
    volume = stored_volume(session, body.volume_id)
    model = resident_model(pool, body.model_id)
    sae = resident_sae(pool, body.sae_id, model)
    seg_id = new_id()
    dest = storage.area_dir("segmentations", seg_id)
    with storage.staging() as stage:
        summary = await pool.run(
            segmenting.segment, pool, storage, volume, model, sae, body.top_k, stage, kind="segmentation"
        )
        storage.publish(stage, dest)
    row = Segmentation(
        id=seg_id,
        volume_id=volume.id,
        model_id=model.id,
        sae_id=sae.id if sae else None,
        summary=summary,
        path=storage.relative(dest),
    )
    try:
        session.add(row)
        await anyio.to_thread.run_sync(session.commit)
    except IntegrityError as exc:  # the volume was deleted while we segmented it
        storage.remove_dir(dest)
        raise ResourceNotFound(f"Volume {volume.id} was deleted during the request.") from exc
    except BaseException:
        storage.remove_dir(dest)
        raise
    return to_out(row)


@router.get("", response_model=SegmentationPage, responses=problem_responses(*problem_statuses()))
def list_segmentations(
    _key: ReadKey,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    volume_id: Annotated[str | None, Query(pattern=r"^[0-9a-f]{32}$")] = None,
) -> SegmentationPage:
    """Segmentations, newest first; ``volume_id`` filters by volume."""
    query = select(Segmentation)
    if volume_id is not None:
        query = query.where(Segmentation.volume_id == volume_id)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(
        query.order_by(Segmentation.created.desc(), Segmentation.id).limit(limit).offset(offset)
    )
    return SegmentationPage(items=[to_out(r) for r in rows], total=total, limit=limit, offset=offset)


@router.get(
    "/{segmentation_id}",
    response_model=SegmentationOut,
    responses=problem_responses(*problem_statuses((404,))),
)
def get_segmentation(_key: ReadKey, segmentation: SegmentationDep) -> SegmentationOut:
    """One segmentation's summary."""
    return to_out(segmentation)


@router.get(
    "/{segmentation_id}/mask",
    response_class=FileResponse,
    responses={**GZIP_NIFTI, **problem_responses(*problem_statuses((404, 410)))},
)
def get_segmentation_mask(_key: ReadKey, segmentation: SegmentationDep, storage: StorageDep) -> FileResponse:
    """The label map (0 background, 1 NCR, 2 SNFH, 3 ET) as NIfTI on the volume's original grid."""
    path = stored_artefact(
        storage.resolve(segmentation.path) / segmenting.MASK_FILE,
        f"mask of segmentation {segmentation.id}",
        REDO_SEGMENTATION,
    )
    return FileResponse(path, media_type="application/gzip", filename=f"{segmentation.id}-mask.nii.gz")


@router.get(
    "/{segmentation_id}/latents/{latent}/map",
    response_class=FileResponse,
    responses={**GZIP_NIFTI, **problem_responses(*problem_statuses((404, 409, 410)))},
)
async def get_latent_map(
    _key: ReadKey,
    segmentation: SegmentationDep,
    latent: Annotated[int, Path(ge=0, le=1_000_000, description="SAE latent index, < d_sae (else 404).")],
    session: SessionDep,
    storage: StorageDep,
    pool: PoolDep,
) -> FileResponse:
    """Activation map of one SAE latent in this volume (float32 NIfTI, original grid, 0 outside brain).

    409 when the segmentation was made without an SAE or its model/SAE is no longer resident.
    """
    if segmentation.sae_id is None:
        raise Conflict("This segmentation was made without an SAE; segment again with an sae_id.")
    model, sae = pool.models.get(segmentation.model_id), pool.saes.get(segmentation.sae_id)
    if model is None or sae is None:
        raise Conflict("The model or SAE of this segmentation is no longer loaded; segment again.")
    d_sae = int(sae.obj.W_dec.shape[0])
    if latent >= d_sae:
        raise ResourceNotFound(f"SAE {sae.id!r} has {d_sae} latents; choose 0..{d_sae - 1}.")
    folder = storage.resolve(segmentation.path)
    stored_artefact(folder / segmenting.MASK_FILE, f"segmentation {segmentation.id}", REDO_SEGMENTATION)
    path = folder / "latents" / f"{latent}.nii.gz"
    if not path.is_file():  # maps are made on first request, next to the segmentation they belong to
        volume = stored_volume(session, segmentation.volume_id)
        await pool.run(
            segmenting.write_latent_map, pool, storage, volume, model, sae, latent, path, kind="latent_map"
        )
    return FileResponse(
        path, media_type="application/gzip", filename=f"{segmentation.id}-latent{latent}.nii.gz"
    )


@router.get(
    "/{segmentation_id}/overlay.png",
    response_class=Response,
    responses={**PNG, **problem_responses(*problem_statuses((404, 410)))},
)
async def get_segmentation_overlay(
    _key: ReadKey,
    segmentation: SegmentationDep,
    session: SessionDep,
    storage: StorageDep,
    pool: PoolDep,
    slice: Annotated[
        int | None,
        Query(ge=0, le=100_000, description="Axial slice z of the RAS grid; default: most tumour."),
    ] = None,
) -> Response:
    """The four modalities of one axial slice with the predicted label outlines (422 when out of range)."""
    volume = stored_volume(session, segmentation.volume_id)
    depth = int(volume.shape[2])
    if slice is not None and slice >= depth:
        raise SliceOutOfRange(f"slice {slice} is out of range; the volume has axial slices 0..{depth - 1}.")
    labels = stored_artefact(
        storage.resolve(segmentation.path) / segmenting.LABELS_FILE,
        f"label map of segmentation {segmentation.id}",
        REDO_SEGMENTATION,
    )
    png = await pool.run(
        segmenting.render_overlay, storage, volume, labels, slice, segmentation.model_id, kind="preview"
    )
    return Response(png, media_type="image/png")
