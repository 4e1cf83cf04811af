"""The worker runtime of a process: built from settings, installed once, used by the RQ entry point.

This module owns the process-wide :class:`~service.jobs.runner.JobRuntime` of a worker. It sits
above :mod:`.runner` (which only runs attempts against a runtime it is given) and below
:mod:`.worker` (the RQ worker loop installs the runtime here), so imports run one way:
``dispatch`` and ``runner`` know nothing of each other or of this module.

RQ finds :func:`run_rq_job` by its dotted name (:data:`service.jobs.dispatch.RQ_ENTRY`); a plain
``rq worker`` on our queue builds the runtime from ``MEDSEGLENS_*`` variables on its first job.
"""

from __future__ import annotations

from pathlib import Path

from service.config import Settings
from service.db import create_tables, make_engine, make_sessionmaker
from service.jobs import keys
from service.jobs.config import JobSettings
from service.jobs.runner import JobRuntime, execute_job
from service.jobs.store import JobStore
from service.pool import resolve_device

_RUNTIME: JobRuntime | None = None


def install_runtime(runtime: JobRuntime) -> None:
    """Make ``runtime`` the one :func:`run_rq_job` uses in this process (the worker calls this)."""
    global _RUNTIME
    _RUNTIME = runtime


def installed_runtime() -> JobRuntime:
    """The installed runtime; built from the environment (and installed) when there is none yet."""
    global _RUNTIME
    if _RUNTIME is None:
        _RUNTIME = runtime_from_env()
    return _RUNTIME


def run_rq_job(job_id: str) -> str:
    """RQ entry point: the payload is only the job id (JSON); params come from the database."""
    state = execute_job(job_id, installed_runtime())
    return state.value if state is not None else "skipped"


def build_runtime(
    *, database_url: str, data_dir: Path, zoo: Path, device: str, settings: JobSettings, worker_id: str
) -> JobRuntime:
    """A :class:`JobRuntime` on its own engine (tables created if missing)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(database_url)
    create_tables(engine)
    return JobRuntime(
        store=JobStore(make_sessionmaker(engine)),
        settings=settings,
        zoo=zoo,
        data_dir=data_dir,
        device=device,
        worker_id=worker_id,
    )


def runtime_from_env(
    device: str | None = None, zoo: Path | None = None, queue: str | None = None
) -> JobRuntime:
    """The runtime described by ``MEDSEGLENS_*`` variables (used by ``medseglens worker`` and plain RQ)."""
    s, js = Settings(), JobSettings()
    dev = resolve_device(device or s.device)
    return build_runtime(
        database_url=s.database_url,
        data_dir=s.data_dir,
        zoo=zoo or s.zoo_dir,
        device=dev,
        settings=js,
        worker_id=keys.worker_name(queue or js.queue, dev),
    )
