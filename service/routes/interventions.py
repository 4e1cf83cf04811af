"""Interventions: edit SAE latents in a volume's forward pass; read the effect; download the mask."""

from __future__ import annotations

from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends
from fastapi.responses import FileResponse
from sqlalchemy.exc import IntegrityError

from service import segmenting
from service.deps import InterveneKey, PoolDep, ReadKey, ServerId, SessionDep, SettingsDep, StorageDep
from service.errors import (
    ResourceNotFound,
    ServiceError,
    problem_responses,
    problem_statuses,
    stored_artefact,
)
from service.latent_cards import CardStore
from service.models_db import Intervention
from service.pool import ModelPool, Resident
from service.routes.segmentations import GZIP_NIFTI, resident_model, resident_sae, stored_volume
from service.schemas.interventions import InterventionCreate, InterventionOut, RegionSummary
from service.storage import new_id

router = APIRouter(prefix="/interventions", tags=["interventions"])


class GateSaeMissing(ServiceError):
    """A gate at another hook without a matching ``gate_sae_id``."""

    status, slug, title = 422, "gate-sae-missing", "No SAE for the gate's hook"


class MaskScopeUnsupported(ServiceError):
    """Scope ``mask`` without ``mask_volume_id``, or a mask volume that has no label map."""

    status, slug, title = 422, "mask-unavailable", "No mask for scope 'mask'"


def to_out(row: Intervention) -> InterventionOut:
    """The response schema of a stored intervention."""
    s = row.summary
    return InterventionOut(
        id=row.id,
        created=row.created,
        volume_id=row.volume_id,
        model_id=row.model_id,
        sae_id=row.sae_id,
        edits=row.edits,
        gate=s.get("gate"),
        gate_score=s.get("gate_score"),
        gate_open=s.get("gate_open"),
        protect=s.get("protect", []),
        baseline=RegionSummary(region_volumes_ml=s["baseline_volume_ml"], dice=s["dice_before"]),
        edited=RegionSummary(region_volumes_ml=s["edited_volume_ml"], dice=s["dice_after"]),
        volume_change_ml=s["volume_change_ml"],
        dice_change=s["dice_change"],
        changed_voxels=s["changed_voxels"],
        changed_tokens=s["changed_tokens"],
        rerun_slices=s["rerun_slices"],
        prefix_cache_hit=s.get("prefix_cache_hit", False),
        edit_info=s["edits"],
        timings=s.get("timings", {}),
        ood=s.get("ood"),
        provenance=s.get("provenance"),
    )


def _gate_sae(
    pool: ModelPool, body: InterventionCreate, spec: Any, model: Resident, sae: Resident
) -> Resident | None:
    """The SAE a gate at another hook reads (``gate_sae_id``), checked; None when the gate reads
    the edited SAE. Gate latents are checked against the SAE the gate reads."""
    from medseglens_core.interventions.errors import LatentOutOfRange

    if spec.gate is None:
        return None
    reader, other = sae, spec.gate.hook is not None and spec.gate.hook != sae.card.get("hook")
    if other:
        if body.gate_sae_id is None:
            raise GateSaeMissing(
                f"The gate reads hook {spec.gate.hook!r}: give 'gate_sae_id', an SAE of {model.id!r} at that hook."
            )
        reader = resident_sae(pool, body.gate_sae_id, model)
        if reader is None or reader.card.get("hook") != spec.gate.hook:
            raise GateSaeMissing(
                f"SAE {body.gate_sae_id!r} reads hook {reader.card.get('hook') if reader else None!r}, "
                f"not the gate's {spec.gate.hook!r}."
            )
    d_sae = int(reader.obj.W_dec.shape[0])
    for latent in spec.gate.latents:
        if latent >= d_sae:
            raise LatentOutOfRange(
                f"gate latent {latent} does not exist: SAE {reader.id!r} has {d_sae} latents"
            )
    return reader if other else None


def intervention_or_404(intervention_id: ServerId, session: SessionDep) -> Intervention:
    """The intervention ``intervention_id`` or a 404 problem."""
    row = session.get(Intervention, intervention_id)
    if row is None:
        raise ResourceNotFound(f"No intervention {intervention_id}.")
    return row


InterventionDep = Annotated[Intervention, Depends(intervention_or_404)]


@router.post(
    "",
    status_code=201,
    response_model=InterventionOut,
    responses=problem_responses(*problem_statuses((400, 404, 413, 503))),  # 503: zoo entry broken
)
async def create_intervention(
    _key: InterveneKey,
    body: InterventionCreate,
    session: SessionDep,
    storage: StorageDep,
    pool: PoolDep,
    settings: SettingsDep,
) -> InterventionOut:
    """Apply latent edits (spliced with the SAE error term kept) and compare with the unedited prediction.

    Only the network after the hook re-runs, from the prefix cached by a segmentation of the same
    volume and model (computed now on a miss). An empty edit list changes nothing (changed_voxels 0,
    mask bit-identical to the segmentation's); so does a `gate` that stays closed on this volume
    (`gate_open` false). `protect` keeps the unedited labels of voxels in those predicted regions
    (e.g. `["TC"]`: an oedema repair that may not relabel the core). 422 for an invalid spec
    (unknown op, missing value, latent >= d_sae in an edit or the gate, scope `mask` without a
    labelled `mask_volume_id` on the same grid), an SAE of another model (`sae-model-mismatch`),
    or a `patch` whose reference cohort has no statistics.
    """
    from medseglens_core.interventions.errors import LatentOutOfRange
    from medseglens_core.interventions.spec import InterventionSpec

    volume = stored_volume(session, body.volume_id)
    model = resident_model(pool, body.model_id)
    sae = resident_sae(pool, body.sae_id, model)
    if sae is None:  # pragma: no cover - sae_id is required, so resident_sae returns one or raises
        raise ResourceNotFound(f"No SAE {body.sae_id!r}.")
    spec = InterventionSpec(edits=body.edits, gate=body.gate, protect=body.protect)
    mask_volume = None
    if spec.needs_mask:
        if body.mask_volume_id is None:
            raise MaskScopeUnsupported(
                "Scope 'mask' needs 'mask_volume_id' (an uploaded volume with a label)."
            )
        mask_volume = stored_volume(session, body.mask_volume_id)
        if not mask_volume.has_label:
            raise MaskScopeUnsupported(f"Volume {mask_volume.id} has no label map to use as a mask.")
    d_sae = int(sae.obj.W_dec.shape[0])
    for latent in [e.latent for e in spec.edits]:
        if latent >= d_sae:
            raise LatentOutOfRange(f"latent {latent} does not exist: SAE {sae.id!r} has {d_sae} latents")
    gate_sae = _gate_sae(pool, body, spec, model, sae)
    reference = None
    if spec.reference_cohorts:
        store = CardStore(settings.zoo_dir, settings.data_dir / "cache", sae, model)
        reference = await pool.run(store.reference_stats, kind="latent_cards")
    item_id = new_id()
    dest = storage.area_dir("interventions", item_id)
    with storage.staging() as stage:
        summary = await pool.run(
            segmenting.intervene,
            pool,
            storage,
            volume,
            model,
            sae,
            spec,
            reference,
            stage,
            mask_volume,
            gate_sae,
            kind="intervention",
        )
        storage.publish(stage, dest)
    if spec.gate is not None:
        summary["gate"] = spec.gate.model_dump(mode="json")
    summary["protect"] = list(spec.protect)
    row = Intervention(
        id=item_id,
        volume_id=volume.id,
        model_id=model.id,
        sae_id=sae.id,
        edits=[e.model_dump(mode="json") for e in spec.edits],
        summary=summary,
        path=storage.relative(dest),
    )
    try:
        session.add(row)
        await anyio.to_thread.run_sync(session.commit)
    except IntegrityError as exc:
        storage.remove_dir(dest)
        raise ResourceNotFound(f"Volume {volume.id} was deleted during the request.") from exc
    except BaseException:
        storage.remove_dir(dest)
        raise
    return to_out(row)


@router.get(
    "/{intervention_id}",
    response_model=InterventionOut,
    responses=problem_responses(*problem_statuses((404,))),
)
def get_intervention(_key: ReadKey, intervention: InterventionDep) -> InterventionOut:
    """One intervention's effect summary."""
    return to_out(intervention)


@router.get(
    "/{intervention_id}/mask",
    response_class=FileResponse,
    responses={**GZIP_NIFTI, **problem_responses(*problem_statuses((404, 410)))},
)
def get_intervention_mask(_key: ReadKey, intervention: InterventionDep, storage: StorageDep) -> FileResponse:
    """The edited label map as NIfTI on the volume's original grid and affine."""
    path = stored_artefact(
        storage.resolve(intervention.path) / segmenting.MASK_FILE,
        f"mask of intervention {intervention.id}",
        "submit the intervention again (POST /v1/interventions) and use the new id",
    )
    return FileResponse(path, media_type="application/gzip", filename=f"{intervention.id}-mask.nii.gz")
