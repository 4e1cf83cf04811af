"""DICOM: MR studies in (upload, DICOMweb pull), DICOM SEG out (download, STOW-RS back to the PACS).

A DICOM study becomes the same stored volume as a NIfTI upload (four NIfTI files on t1c's grid and a
``Volume`` row), plus the UIDs of its source under ``dicom/`` so SEGs can reference it.
"""

from __future__ import annotations

import hashlib
import json
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio.to_thread
from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from medseglens_core.io.dicom import DEFAULT_RULES_DOC
from service import segmenting
from service.cases import load_case
from service.deps import MetricsDep, PoolDep, ReadKey, SegmentKey, SessionDep, SettingsDep, StorageDep
from service.dicom import (
    NoDicomSource,
    dicom_source,
    load_upload_datasets,
    parse_series_map,
    pull_study,
    receive_dicom_multipart,
    reference_datasets,
    sha256_file,
    stow,
    study_to_stage,
)
from service.errors import InvalidUpload, problem_responses, problem_statuses, stored_artefact
from service.jsonlimits import loads_bounded
from service.models_db import Intervention, Segmentation, Volume
from service.routes.interventions import InterventionDep
from service.routes.segmentations import SegmentationDep
from service.routes.volumes import to_out
from service.schemas.common import Problem
from service.schemas.volumes import VolumeOut
from service.storage import Storage, new_id

router = APIRouter(tags=["dicom"])

_UID = r"^[0-9]+(\.[0-9]+)*$"


class DicomSeriesOut(BaseModel):
    series_instance_uid: str
    series_number: int | None
    series_description: str
    slices: int


class DicomSourceOut(BaseModel):
    study_instance_uid: str
    frame_of_reference_uid: str
    series: dict[str, DicomSeriesOut] = Field(description="Modality -> the series it was read from.")
    resampled_onto_t1c: list[str] = Field(
        description="Modalities resampled (trilinear) onto t1c's grid because spacing/extent differed."
    )


class DicomVolumeOut(VolumeOut):
    """The stored volume (as for a NIfTI upload) and where it came from."""

    dicom: DicomSourceOut


class DicomwebPull(BaseModel):
    model_config = ConfigDict(extra="forbid")

    study_instance_uid: str = Field(pattern=_UID, max_length=64)
    series_map: dict[str, Literal["t1n", "t1c", "t2w", "t2f"]] | None = Field(
        default=None,
        description="SeriesInstanceUID or SeriesDescription -> modality; else the default rules.",
    )
    cohort: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,100}$")


class StowOut(BaseModel):
    sop_instance_uid: str
    series_instance_uid: str
    study_instance_uid: str
    already_stored: bool = Field(description="True when this SEG was stored before (nothing sent again).")


def _responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``problem_responses`` plus 502 (the PACS failed), which the shared table does not document."""
    out = problem_responses(*problem_statuses(tuple(s for s in statuses if s != 502)))
    if 502 in statuses:
        out[502] = {
            **out[next(iter(out))],
            "description": "The DICOMweb server could not be reached or failed (problem+json); nothing stored.",
        }
        out[502].pop("model", None)
        out[502]["model"] = Problem
    return out


_FILE = {"type": "string", "format": "binary"}
DICOM_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "title": "DicomUpload",
                    "description": (
                        "One study: its .dcm files as repeated `file` parts, or one zip of them. Series map to "
                        "modalities by `series_map`, else by the default rules: " + DEFAULT_RULES_DOC
                    ),
                    "properties": {
                        "file": {"type": "array", "items": _FILE, "description": ".dcm files or one zip."},
                        "series_map": {
                            "type": "string",
                            "description": "JSON object: SeriesInstanceUID or SeriesDescription -> t1n/t1c/t2w/t2f.",
                        },
                        "cohort": {"type": "string"},
                        "metadata": {"type": "string", "description": "A JSON object."},
                    },
                    "required": ["file"],
                }
            }
        },
    }
}
DICOM_FILE = {
    200: {
        "content": {"application/dicom": {"schema": {"type": "string", "format": "binary"}}},
        "description": "A DICOM Segmentation instance (Part 10 file).",
    }
}


def _dicom_out(volume: Volume, source: dict[str, Any]) -> DicomVolumeOut:
    base = to_out(volume).model_dump()
    series = {
        m: DicomSeriesOut(**{k: s[k] for k in DicomSeriesOut.model_fields})
        for m, s in source["series"].items()
    }
    return DicomVolumeOut(
        **base,
        dicom=DicomSourceOut(
            study_instance_uid=source["study_instance_uid"],
            frame_of_reference_uid=source["frame_of_reference_uid"],
            series=series,
            resampled_onto_t1c=source["resampled_onto_t1c"],
        ),
    )


def _build_volume(
    datasets_fn: Any,
    series_map: dict[str, str] | None,
    stage: Path,
    volume_id: str,
    max_voxels: int,
    max_bytes: int,
) -> tuple[Any, dict[str, Path], dict[str, Any]]:
    """Blocking: datasets -> staged NIfTI + dicom/, validated by the same loader as NIfTI uploads."""
    datasets = datasets_fn()
    study, paths = study_to_stage(datasets, series_map, stage, max_voxels=max_voxels)
    case = load_case(paths, None, volume_id, max_voxels=max_voxels, max_bytes=max_bytes)
    return case, paths, study.source()


async def _store(
    datasets_fn: Any,
    series_map: dict[str, str] | None,
    cohort: str | None,
    metadata: dict[str, Any],
    *,
    stage: Path,
    volume_id: str,
    settings: Any,
    storage: Storage,
    session: Any,
    pool: Any,
) -> DicomVolumeOut:
    dest = storage.area_dir("volumes", volume_id)
    case, paths, source = await pool.run(
        partial(
            _build_volume,
            datasets_fn,
            series_map,
            stage,
            volume_id,
            settings.max_voxels,
            settings.max_upload_bytes,
        ),
        kind="load_dicom",
    )
    files = [
        {
            "role": m,
            "sha256": sha256_file(p),
            "bytes": p.stat().st_size,
            "path": storage.relative(dest / p.name),
        }
        for m, p in paths.items()
    ]
    storage.publish(stage, dest)
    volume = Volume(
        id=volume_id,
        cohort=cohort,
        meta=metadata,
        shape=[int(s) for s in case.geometry.shape],
        spacing=[float(s) for s in case.geometry.spacing],
        files=files,
        has_label=False,
        modality_order=None,
    )
    try:
        session.add(volume)
        await anyio.to_thread.run_sync(session.commit)
    except BaseException:
        storage.remove_dir(dest)
        raise
    return _dicom_out(volume, source)


@router.post(
    "/volumes/dicom",
    status_code=201,
    response_model=DicomVolumeOut,
    openapi_extra=DICOM_BODY,
    responses=problem_responses(*problem_statuses((400, 413, 415))),
)
async def create_volume_from_dicom(
    _key: SegmentKey,
    request: Request,
    settings: SettingsDep,
    storage: StorageDep,
    session: SessionDep,
    pool: PoolDep,
    metrics: MetricsDep,
) -> DicomVolumeOut:
    """Upload one MR study (four series t1n/t1c/t2w/t2f) as .dcm files or one zip.

    Slices are ordered by ImagePositionPatient along the slice normal, intensities rescaled, and the
    affine is the one dcm2niix/nibabel give. Ambiguous or incomplete series mapping: 422 listing the
    series; compressed pixel data without a decoder: 415; nothing is stored on any error.
    """
    volume_id = new_id()
    with storage.staging() as stage:
        upload = await receive_dicom_multipart(request, stage, max_bytes=settings.max_upload_bytes)
        series_map = parse_series_map(upload.fields.get("series_map"))
        cohort = upload.fields.get("cohort") or None
        if cohort is not None:
            _valid_cohort(cohort)
        metadata: dict[str, Any] = {}
        if upload.fields.get("metadata"):
            try:
                metadata = loads_bounded(upload.fields["metadata"], "'metadata'")
            except json.JSONDecodeError as exc:
                raise InvalidUpload("'metadata' is not valid JSON; send a JSON object.") from exc
            if not isinstance(metadata, dict):
                raise InvalidUpload("'metadata' must be a JSON object.")
        out = await _store(
            partial(load_upload_datasets, upload.parts, settings.max_upload_bytes),
            series_map,
            cohort,
            metadata,
            stage=stage,
            volume_id=volume_id,
            settings=settings,
            storage=storage,
            session=session,
            pool=pool,
        )
    metrics.uploads_bytes.inc(upload.size)
    return out


def _valid_cohort(cohort: str) -> bool:
    import re

    if not re.fullmatch(r"^[A-Za-z0-9_.-]{1,100}$", cohort):
        raise InvalidUpload("'cohort' must be 1-100 letters, digits, '_', '.' or '-'.")
    return True


@router.post(
    "/volumes/dicomweb",
    status_code=201,
    response_model=DicomVolumeOut,
    responses=_responses(400, 404, 413, 415, 502, 503),
)
async def create_volume_from_dicomweb(
    _key: SegmentKey,
    body: DicomwebPull,
    settings: SettingsDep,
    storage: StorageDep,
    session: SessionDep,
    pool: PoolDep,
) -> DicomVolumeOut:
    """Pull a study from MEDSEGLENS_DICOMWEB_URL (QIDO-RS series, WADO-RS instances) and store it.

    502 when the server cannot be reached or fails, 503 when none is configured, 404 when it has no
    MR series for the study; nothing is stored then.
    """
    volume_id = new_id()
    with storage.staging() as stage:
        return await _store(
            partial(pull_study, body.study_instance_uid, settings.max_upload_bytes),
            body.series_map,
            body.cohort,
            {},
            stage=stage,
            volume_id=volume_id,
            settings=settings,
            storage=storage,
            session=session,
            pool=pool,
        )


# ---------------------------------------------------------------------------------- SEG out


def _seg_for(
    storage: Storage,
    pool: Any,
    row: Segmentation | Intervention,
    kind: str,
    spec_id: str | None,
) -> tuple[Path, dict[str, Any]]:
    """Build (or reuse) the SEG file of ``row``; returns (path, its UIDs)."""
    import nibabel as nib
    import numpy as np
    import pydicom
    from pydicom.uid import generate_uid

    from medseglens_core.io.dicom_seg import build_seg, seg_bytes

    vdir = storage.area_dir("volumes", row.volume_id)
    source = dicom_source(vdir)
    if source is None:
        raise NoDicomSource(
            f"Volume {row.volume_id} was uploaded as NIfTI and has no DICOM source to reference; "
            "upload it through POST /v1/volumes/dicom or /v1/volumes/dicomweb for a SEG."
        )
    art = storage.resolve(row.path)
    path = art / f"seg-{kind}.dcm"
    if not path.is_file():
        mask_file = stored_artefact(
            art / segmenting.MASK_FILE, f"mask of {row.id}", "make it again and use the new id"
        )
        mask = np.asarray(nib.load(mask_file).dataobj)
        model = pool.models.get(row.model_id)
        sha = str(model.card.get("weights_sha256", "")) if model is not None else ""
        seg = build_seg(
            reference_datasets(vdir),
            mask,
            model_id=row.model_id,
            weights_sha256=sha,
            spec_id=spec_id,
            segmentation_type=kind,
            series_uid=generate_uid(entropy_srcs=["medseglens-seg-series", row.id, kind]),
            sop_uid=generate_uid(entropy_srcs=["medseglens-seg", row.id, kind]),
        )
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(seg_bytes(seg))
        tmp.replace(path)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    uids = {
        "sop_instance_uid": str(ds.SOPInstanceUID),
        "series_instance_uid": str(ds.SeriesInstanceUID),
        "study_instance_uid": str(ds.StudyInstanceUID),
    }
    return path, uids


def _spec_id(intervention: Intervention) -> str:
    spec = json.dumps(
        {"edits": intervention.edits, "gate": (intervention.summary or {}).get("gate")}, sort_keys=True
    )
    return f"{intervention.id}:{hashlib.sha256(spec.encode()).hexdigest()[:16]}"


SegType = Annotated[Literal["binary", "labelmap"], Query(description="BINARY (default) or LABELMAP SEG.")]


async def _seg_response(
    storage: Storage, pool: Any, session: Any, row: Any, kind: str, spec_id: str | None
) -> Response:
    path, _ = await pool.run(_seg_for, storage, pool, row, kind, spec_id, kind="seg_export")
    return Response(
        path.read_bytes(),
        media_type="application/dicom",
        headers={"Content-Disposition": f'attachment; filename="{row.id}-seg.dcm"'},
    )


async def _stow(storage: Storage, pool: Any, session: Any, row: Any, spec_id: str | None) -> StowOut:
    import pydicom

    path, uids = await pool.run(_seg_for, storage, pool, row, "binary", spec_id, kind="seg_export")
    record = path.with_name("stow.json")
    if (
        record.is_file()
        and json.loads(record.read_text()).get("sop_instance_uid") == uids["sop_instance_uid"]
    ):
        return StowOut(**uids, already_stored=True)
    await anyio.to_thread.run_sync(lambda: stow(pydicom.dcmread(path)))
    record.write_text(json.dumps(uids))
    return StowOut(**uids, already_stored=False)


@router.get(
    "/segmentations/{segmentation_id}/seg.dcm",
    response_class=Response,
    responses={**DICOM_FILE, **problem_responses(*problem_statuses((404, 409, 410)))},
)
async def get_segmentation_seg(
    _key: ReadKey,
    segmentation: SegmentationDep,
    storage: StorageDep,
    pool: PoolDep,
    session: SessionDep,
    type: SegType = "binary",  # noqa: A002 - the query parameter's name
) -> Response:
    """The mask as a DICOM SEG over the source t1c series (same Frame of Reference, frames = mask).

    Segments NCR / SNFH (oedema) / ET with SNOMED CT codes and display colours; AlgorithmIdentification
    names the model and its weights' sha256. 409 for volumes uploaded as NIfTI.
    """
    return await _seg_response(storage, pool, session, segmentation, type, None)


@router.get(
    "/interventions/{intervention_id}/seg.dcm",
    response_class=Response,
    responses={**DICOM_FILE, **problem_responses(*problem_statuses((404, 409, 410)))},
)
async def get_intervention_seg(
    _key: ReadKey,
    intervention: InterventionDep,
    storage: StorageDep,
    pool: PoolDep,
    session: SessionDep,
    type: SegType = "binary",  # noqa: A002
) -> Response:
    """The edited mask as a DICOM SEG; AlgorithmIdentification also carries the intervention spec's id."""
    return await _seg_response(storage, pool, session, intervention, type, _spec_id(intervention))


@router.post(
    "/segmentations/{segmentation_id}/dicomweb",
    response_model=StowOut,
    responses=_responses(404, 409, 502, 503),
)
async def stow_segmentation_seg(
    _key: SegmentKey, segmentation: SegmentationDep, storage: StorageDep, pool: PoolDep, session: SessionDep
) -> StowOut:
    """STOW-RS the BINARY SEG to MEDSEGLENS_DICOMWEB_URL; the same SOP Instance UID every time (idempotent)."""
    return await _stow(storage, pool, session, segmentation, None)


@router.post(
    "/interventions/{intervention_id}/dicomweb",
    response_model=StowOut,
    responses=_responses(404, 409, 502, 503),
)
async def stow_intervention_seg(
    _key: SegmentKey, intervention: InterventionDep, storage: StorageDep, pool: PoolDep, session: SessionDep
) -> StowOut:
    """STOW-RS the intervention's BINARY SEG (idempotent per intervention)."""
    return await _stow(storage, pool, session, intervention, _spec_id(intervention))
