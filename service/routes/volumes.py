"""Volumes: upload (multipart, streamed to disk), list, read, delete, preview."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import func, select

from medseglens_core.io.case import MODALITIES
from service.cases import load_case, load_volume_case
from service.deps import (
    MetricsDep,
    PoolDep,
    ReadKey,
    SegmentKey,
    SessionDep,
    SettingsDep,
    StorageDep,
    VolumeDep,
)
from service.errors import MAX_OFFSET, InvalidUpload, problem_responses, problem_statuses
from service.jsonlimits import loads_bounded
from service.models_db import Intervention, Segmentation, Volume
from service.schemas.volumes import VolumeFile, VolumeOut, VolumePage
from service.storage import Storage, atomic_write_bytes, new_id
from service.uploads import ParsedUpload, receive_multipart

router = APIRouter(prefix="/volumes", tags=["volumes"])

FILE_ROLES = frozenset({*MODALITIES, "image", "label"})
TEXT_FIELDS = frozenset({"modality_order", "cohort", "metadata"})
ROLE_ORDER = (*MODALITIES, "image", "label")
_COHORT_RE = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")

_FILE = {"type": "string", "format": "binary"}
UPLOAD_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "title": "VolumeUpload",
                    "description": (
                        "Either the four modality files (t1n, t1c, t2w, t2f) or one 4-D file `image` with "
                        "`modality_order`. NIfTI-1/2, gzipped or not. File names are ignored."
                    ),
                    "properties": {
                        **{m: {**_FILE, "description": f"{m} NIfTI volume."} for m in MODALITIES},
                        "image": {**_FILE, "description": "One 4-D NIfTI, modalities on the 4th axis."},
                        "modality_order": {
                            "type": "string",
                            "description": "Order of `image`'s 4th axis, e.g. `t1n,t1c,t2w,t2f`.",
                        },
                        "label": {**_FILE, "description": "Optional label map (BraTS 0-3; 4 read as 3)."},
                        "cohort": {"type": "string", "pattern": _COHORT_RE.pattern},
                        "metadata": {"type": "string", "description": "A JSON object, at most 64 KiB."},
                    },
                }
            }
        },
    }
}


@dataclass(frozen=True)
class UploadForm:
    """The validated text fields and the shape of the upload."""

    modality_order: tuple[str, ...] | None
    cohort: str | None
    metadata: dict[str, Any]


def parse_form(upload: ParsedUpload) -> UploadForm:
    """Check the combination of parts and parse the text fields; 422 problems on bad values."""
    roles = set(upload.files)
    separate = roles & set(MODALITIES)
    if "image" in roles and separate:
        raise InvalidUpload("Send either the four modality files or one 4-D 'image', not both.")
    if "image" not in roles and separate != set(MODALITIES):
        missing = ", ".join(m for m in MODALITIES if m not in roles)
        raise InvalidUpload(
            f"Missing modality file(s): {missing}; or send one 4-D 'image' + 'modality_order'."
        )
    order: tuple[str, ...] | None = None
    if "image" in roles:
        raw = upload.fields.get("modality_order", "").strip()
        if not raw:
            raise InvalidUpload("A 4-D 'image' needs 'modality_order', e.g. 't1n,t1c,t2w,t2f'.")
        try:
            items = loads_bounded(raw, "'modality_order'") if raw.startswith("[") else raw.split(",")
        except json.JSONDecodeError as exc:
            raise InvalidUpload("'modality_order' is not a JSON list or a comma-separated list.") from exc
        order = tuple(str(m).strip() for m in items)
        if sorted(order) != sorted(MODALITIES):
            raise InvalidUpload(f"'modality_order' must name each of {', '.join(MODALITIES)} once.")
    cohort = upload.fields.get("cohort") or None
    if cohort is not None and not _COHORT_RE.fullmatch(cohort):
        raise InvalidUpload("'cohort' must be 1-100 letters, digits, '_', '.' or '-'.")
    metadata: dict[str, Any] = {}
    if upload.fields.get("metadata"):
        try:
            metadata = loads_bounded(upload.fields["metadata"], "'metadata'")
        except json.JSONDecodeError as exc:
            raise InvalidUpload("'metadata' is not valid JSON; send a JSON object.") from exc
        if not isinstance(metadata, dict):
            raise InvalidUpload("'metadata' must be a JSON object.")
    return UploadForm(order, cohort, metadata)


def to_out(volume: Volume) -> VolumeOut:
    """The response schema of a stored volume (no paths, no client file names)."""
    return VolumeOut(
        id=volume.id,
        created=volume.created,
        cohort=volume.cohort,
        metadata=volume.meta,
        shape=[int(s) for s in volume.shape],
        spacing=[float(s) for s in volume.spacing],
        files=[VolumeFile(role=f["role"], sha256=f["sha256"], bytes=f["bytes"]) for f in volume.files],
        has_label=volume.has_label,
        modality_order=volume.modality_order,
    )


@router.post(
    "",
    status_code=201,
    response_model=VolumeOut,
    openapi_extra=UPLOAD_BODY,
    responses=problem_responses(*problem_statuses((400, 413, 415))),
)
async def create_volume(
    _key: SegmentKey,
    request: Request,
    settings: SettingsDep,
    storage: StorageDep,
    session: SessionDep,
    pool: PoolDep,
    metrics: MetricsDep,
) -> VolumeOut:
    """Upload one case (multipart); validated by the core loader; the files are stored as sent."""
    volume_id = new_id()
    dest = storage.area_dir("volumes", volume_id)
    with storage.staging() as stage:
        upload = await receive_multipart(
            request,
            stage,
            max_bytes=settings.max_upload_bytes,
            file_fields=FILE_ROLES,
            text_fields=TEXT_FIELDS,
        )
        form = parse_form(upload)
        paths = {role: f.path for role, f in upload.files.items()}
        limits = {"max_voxels": settings.max_voxels, "max_bytes": settings.max_upload_bytes}
        case = await pool.run(
            partial(load_case, **limits), paths, form.modality_order, volume_id, kind="load_case"
        )
        files = [
            {
                "role": role,
                "sha256": upload.files[role].sha256,
                "bytes": upload.files[role].size,
                "path": storage.relative(dest / upload.files[role].path.name),
            }
            for role in ROLE_ORDER
            if role in upload.files
        ]
        storage.publish(stage, dest)
    volume = Volume(
        id=volume_id,
        cohort=form.cohort,
        meta=form.metadata,
        shape=[int(s) for s in case.geometry.shape],
        spacing=[float(s) for s in case.geometry.spacing],
        files=files,
        has_label=case.label is not None,
        modality_order=list(form.modality_order) if form.modality_order else None,
    )
    try:
        session.add(volume)
        await anyio.to_thread.run_sync(session.commit)
    except BaseException:
        storage.remove_dir(dest)
        raise
    metrics.uploads_bytes.inc(sum(f["bytes"] for f in files))
    return to_out(volume)


@router.get("", response_model=VolumePage, responses=problem_responses(*problem_statuses()))
def list_volumes(
    _key: ReadKey,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    cohort: Annotated[str | None, Query(max_length=100)] = None,
) -> VolumePage:
    """Volumes, newest first; ``cohort`` filters by tag."""
    query = select(Volume)
    if cohort is not None:
        query = query.where(Volume.cohort == cohort)
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    rows = session.scalars(query.order_by(Volume.created.desc(), Volume.id).limit(limit).offset(offset))
    return VolumePage(items=[to_out(v) for v in rows], total=total, limit=limit, offset=offset)


@router.get("/{volume_id}", response_model=VolumeOut, responses=problem_responses(*problem_statuses((404,))))
def get_volume(_key: ReadKey, volume: VolumeDep) -> VolumeOut:
    """One volume's record."""
    return to_out(volume)


@router.delete(
    "/{volume_id}",
    status_code=204,
    response_class=Response,
    responses=problem_responses(*problem_statuses((404,))),
)
def delete_volume(
    _key: SegmentKey, volume: VolumeDep, session: SessionDep, storage: StorageDep, pool: PoolDep
) -> Response:
    """Delete a volume, its files, and the segmentations and interventions made from it."""
    artefacts = [
        *session.scalars(select(Segmentation.path).where(Segmentation.volume_id == volume.id)),
        *session.scalars(select(Intervention.path).where(Intervention.volume_id == volume.id)),
    ]
    session.delete(volume)
    session.commit()
    storage.remove_dir(storage.area_dir("volumes", volume.id))
    for rel in artefacts:
        storage.remove_dir(storage.resolve(rel))
    pool.prefix_cache.invalidate(lambda key: isinstance(key, tuple) and key[:1] == (volume.id,))
    return Response(status_code=204)


@router.get(
    "/{volume_id}/preview.png",
    response_class=Response,
    responses={
        200: {
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
            "description": "PNG.",
        },
        **problem_responses(*problem_statuses((404,))),
    },
)
async def get_volume_preview(
    _key: ReadKey, volume: VolumeDep, storage: StorageDep, pool: PoolDep
) -> Response:
    """The four modalities of one axial slice (the one with most tumour when labelled, else the middle)."""
    cached = storage.area_dir("volumes", volume.id) / "preview.png"
    if cached.is_file():
        return Response(cached.read_bytes(), media_type="image/png")
    png = await pool.run(_render_preview, storage, volume, kind="preview")
    atomic_write_bytes(cached, png)
    return Response(png, media_type="image/png")


def _render_preview(storage: Storage, volume: Volume) -> bytes:
    from service.previews import render_case_preview

    case = load_volume_case(storage, volume)
    return render_case_preview(
        case.image, case.label, caption="uploaded label" if case.label is not None else None
    )
