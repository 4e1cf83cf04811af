"""``/v1/jobs``: submit SAE training, diff reports and recovery benchmarks; read, list, cancel.

Submissions answer 202 with the job and a ``Location``; a retried POST with the same
``Idempotency-Key`` (per API key) returns the same job. The router's lifespan starts the app's
:class:`~service.jobs.service.JobService` (RQ when ``MEDSEGLENS_REDIS_URL`` is set, else embedded).
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response

from medseglens_core.catalog import HELD_OUT, Catalog, split_dir
from service.auth import Principal
from service.deps import ReadKey, ServerId, TrainKey
from service.errors import MAX_OFFSET, ResourceNotFound, problem_responses, problem_statuses
from service.jobs.schemas import (
    DiffReportRequest,
    JobOut,
    JobPage,
    RecoveryRequest,
    RecoverySuiteRequest,
    SaeTrainingRequest,
)
from service.jobs.service import JobService
from service.jobs.states import JobKind, JobState
from service.jobs.tasks.recovery import RESULT_FILE
from service.jobs.tasks.recovery_suite import RESULT_FILE as SUITE_RESULT
from service.models_db import Volume

log = logging.getLogger("medseglens.jobs")


def _register_sae(app: FastAPI, name: str) -> None:
    """Make a newly published ``ZOO/saes/<name>`` resident in the app's pool (so GET /v1/saes lists it)."""
    app.state.pool.register_sae(name)


def _build(app: FastAPI) -> JobService:
    settings = app.state.settings
    pool = getattr(app.state, "pool", None)
    return JobService(
        app.state.sessionmaker,
        redis_url=settings.redis_url,
        data_dir=settings.data_dir,
        zoo=settings.zoo_dir,
        device=(pool.device if pool is not None and pool.device else "cpu"),
        on_sae_published=(lambda name: _register_sae(app, name)) if pool is not None else None,
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the job service after the app's own lifespan made the database and pool."""
    service = _build(app)
    await anyio.to_thread.run_sync(service.start)
    app.state.jobs = service
    try:
        yield
    finally:
        await anyio.to_thread.run_sync(service.close)


router = APIRouter(prefix="/jobs", tags=["jobs"], lifespan=lifespan)


def get_jobs(request: Request) -> JobService:
    """The app's job service."""
    return request.app.state.jobs


JobsDep = Annotated[JobService, Depends(get_jobs)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        max_length=120,
        pattern=r"^[\x21-\x7e]+$",
        description="Any printable token; a retried POST with the same key returns the same job.",
    ),
]
SUBMIT = problem_responses(*problem_statuses([400, 404, 409, 503]))  # 400: a body that is not JSON


async def _check_zoo(
    request: Request, *, models: tuple[str, ...] = (), saes: tuple[str, ...] = (), cohorts=(), split="train"
) -> None:
    """404 unless every model, SAE and cohort folder (``ZOO/data/<split>/<cohort>``) exists; 503
    ``zoo-entry-unavailable`` for a model or SAE whose files are broken (the pool's check,
    :meth:`~service.pool.ModelPool.entry_usable`), so such a job is never queued."""
    await anyio.to_thread.run_sync(lambda: _check_zoo_sync(request, models, saes, cohorts, split))


def _check_zoo_sync(request: Request, models, saes, cohorts, split: str) -> None:
    zoo = request.app.state.settings.zoo_dir
    pool = request.app.state.pool
    for m in models:
        if not pool.entry_usable("model", m):
            raise ResourceNotFound(f"No model {m!r} in the zoo; list models with GET /v1/models.")
    for s in saes:
        if not pool.entry_usable("sae", s):
            raise ResourceNotFound(f"No SAE {s!r} in the zoo; list SAEs with GET /v1/saes.")
    root = split_dir(zoo, split)
    for c in cohorts:
        if not (root / c).is_dir():
            raise ResourceNotFound(f"No cohort {c!r} under the zoo's data/{split}/ folder.")


def job_entries(
    zoo: Path, model_ids: Sequence[str] | None, *, gate: bool = False, cohort: bool = False
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """``(models, saes)`` a job over ``model_ids`` loads (None: every model with a main SAE, as
    the diff report and the suite read them): each model's main SAE, with ``gate`` its gate SAE
    (the recovery's population gate), with ``cohort`` its per-cohort SAEs (the diff's alignment).
    A model without a main SAE is listed without one (the caller answers 404 for it)."""
    cat = Catalog.read(zoo)
    ids = (
        list(model_ids)
        if model_ids is not None
        else [m.model_id for m in cat.models if cat.main_sae(m.model_id)]
    )
    saes: list[str] = []
    for m in ids:
        refs = [cat.main_sae(m), cat.gate_sae(m) if gate else None]
        refs += list(cat.cohort_saes(m).values()) if cohort else []
        saes += [r.sae_id for r in refs if r is not None]
    return tuple(ids), tuple(dict.fromkeys(saes))


def default_sae(zoo: Path, model_id: str) -> str | None:
    """The SAE a job on ``model_id`` reads when none is given: the zoo catalogue's main SAE."""
    main = Catalog.read(zoo).main_sae(model_id)
    return main.sae_id if main is not None else None


def _check_volumes(request: Request, volume_ids: list[str]) -> None:
    with request.app.state.sessionmaker() as session:
        missing = [v for v in volume_ids if session.get(Volume, v) is None]
    if missing:
        raise ResourceNotFound(f"No volume(s) {', '.join(missing[:5])}; list volumes with GET /v1/volumes.")


async def _submit(
    jobs: JobService, response: Response, key: Principal, kind: JobKind, body: Any, idem: str | None
) -> JobOut:
    scoped = f"{key.key_id}:{idem}" if idem else None
    params = body.model_dump(mode="json")
    job, created = await anyio.to_thread.run_sync(lambda: jobs.submit(kind.value, params, scoped))
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    return JobOut.of(job)


@router.post("/sae-training", status_code=202, response_model=JobOut, responses=SUBMIT)
async def create_sae_training_job(
    key: TrainKey,
    body: SaeTrainingRequest,
    request: Request,
    response: Response,
    jobs: JobsDep,
    idem: IdempotencyKey = None,
) -> JobOut:
    """Queue SAE training on a zoo model's activations; the SAE appears in GET /v1/saes when done."""
    await _check_zoo(request, models=(body.model_id,), cohorts=tuple(body.cohorts or ()))
    if body.volume_ids:
        _check_volumes(request, body.volume_ids)
    return await _submit(jobs, response, key, JobKind.SAE_TRAINING, body, idem)


@router.post("/diff-report", status_code=202, response_model=JobOut, responses=SUBMIT)
async def create_diff_report_job(
    key: TrainKey,
    body: DiffReportRequest,
    request: Request,
    response: Response,
    jobs: JobsDep,
    idem: IdempotencyKey = None,
) -> JobOut:
    """Queue a cross-dataset diff report of the zoo; it appears in GET /v1/diff-reports when done."""
    # the report reads the held-out cases (data/test), so the source cohort must be there, and
    # every model with a main SAE: a broken one is 503 now, not a failed job later
    zoo = request.app.state.settings.zoo_dir
    models, saes = await anyio.to_thread.run_sync(lambda: job_entries(zoo, None, cohort=True))
    await _check_zoo(
        request, models=models, saes=saes, cohorts=(body.source,) if body.source else (), split=HELD_OUT
    )
    return await _submit(jobs, response, key, JobKind.DIFF_REPORT, body, idem)


@router.post("/recovery", status_code=202, response_model=JobOut, responses=SUBMIT)
async def create_recovery_job(
    key: TrainKey,
    body: RecoveryRequest,
    request: Request,
    response: Response,
    jobs: JobsDep,
    idem: IdempotencyKey = None,
) -> JobOut:
    """Queue a recovery benchmark; its result is served by GET /v1/jobs/{job_id}/result."""
    await _check_zoo(  # the benchmark reads the held-out cases (data/test), as the task does
        request,
        models=(body.model_id,),
        saes=(body.sae_id,) if body.sae_id else (),
        cohorts=(body.target,),
        split=HELD_OUT,
    )
    if body.sae_id is None:
        main = default_sae(request.app.state.settings.zoo_dir, body.model_id)
        if main is None:
            raise ResourceNotFound(
                f"Model {body.model_id!r} has no main SAE in the zoo; pass 'sae_id' or train one."
            )
        await _check_zoo(request, saes=(main,))  # the SAE the job will read
    zoo = request.app.state.settings.zoo_dir
    gate = await anyio.to_thread.run_sync(lambda: Catalog.read(zoo).gate_sae(body.model_id))
    await _check_zoo(request, saes=(gate.sae_id,) if gate else ())  # its population gate's SAE
    return await _submit(jobs, response, key, JobKind.RECOVERY, body, idem)


@router.post("/recovery-suite", status_code=202, response_model=JobOut, responses=SUBMIT)
async def create_recovery_suite_job(
    key: TrainKey,
    body: RecoverySuiteRequest,
    request: Request,
    response: Response,
    jobs: JobsDep,
    idem: IdempotencyKey = None,
) -> JobOut:
    """Queue the leave-one-shift-out evaluation; its table is served by GET /v1/jobs/{job_id}/result."""
    await _check_zoo(request, models=tuple(body.model_ids or ()))
    zoo = request.app.state.settings.zoo_dir
    for model_id in body.model_ids or ():
        if default_sae(zoo, model_id) is None:
            raise ResourceNotFound(f"Model {model_id!r} has no main SAE in the zoo; train one first.")
    # the models, main SAEs and gate SAEs the suite will read (without model_ids: every model)
    models, saes = await anyio.to_thread.run_sync(lambda: job_entries(zoo, body.model_ids, gate=True))
    await _check_zoo(request, models=models, saes=saes)
    return await _submit(jobs, response, key, JobKind.RECOVERY_SUITE, body, idem)


@router.get("", response_model=JobPage, responses=problem_responses(*problem_statuses()))
async def list_jobs(
    key: ReadKey,
    jobs: JobsDep,
    state: JobState | None = None,
    kind: JobKind | None = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> JobPage:
    """Jobs, newest first, optionally filtered by state and kind."""
    items, total = await anyio.to_thread.run_sync(
        lambda: jobs.list(state=state and state.value, kind=kind and kind.value, limit=limit, offset=offset)
    )
    return JobPage(items=[JobOut.of(j) for j in items], total=total, limit=limit, offset=offset)


@router.get("/{job_id}", response_model=JobOut, responses=problem_responses(*problem_statuses([404])))
async def get_job(key: ReadKey, job_id: ServerId, jobs: JobsDep) -> JobOut:
    """One job: state, progress, latest metrics, last log lines and, when succeeded, the result link."""
    job = await anyio.to_thread.run_sync(jobs.get, job_id)
    if job.state == JobState.SUCCEEDED.value and job.kind == JobKind.SAE_TRAINING.value:
        await anyio.to_thread.run_sync(jobs.sync_saes)  # a remote worker's SAE: list it right away
    return JobOut.of(job)


@router.delete(
    "/{job_id}",
    status_code=202,
    response_model=JobOut,
    responses=problem_responses(*problem_statuses([404, 409])),
)
async def cancel_job(key: TrainKey, job_id: ServerId, jobs: JobsDep) -> JobOut:
    """Cancel: a queued job ends now; a running one stops within seconds (state ``cancelled``)."""
    return JobOut.of(await anyio.to_thread.run_sync(jobs.cancel, job_id))


@router.get(
    "/{job_id}/result", response_model=dict[str, Any], responses=problem_responses(*problem_statuses([404]))
)
async def get_job_result(key: ReadKey, job_id: ServerId, jobs: JobsDep, request: Request) -> dict[str, Any]:
    """The JSON result of a finished recovery benchmark (recovery.json) or suite (suite.json)."""
    job = await anyio.to_thread.run_sync(jobs.get, job_id)
    name = SUITE_RESULT if job.kind == JobKind.RECOVERY_SUITE.value else RESULT_FILE
    path = request.app.state.settings.data_dir / "jobs" / job.id / name
    if job.state != JobState.SUCCEEDED.value or not path.is_file():
        raise ResourceNotFound(f"Job {job_id} has no JSON result (state {job.state}); see its result_link.")
    return json.loads(path.read_text())
