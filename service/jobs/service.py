"""The API's side of jobs: submit, read, list, cancel; dispatcher, reaper and pool sync.

One :class:`JobService` per API process. With ``redis_url`` it submits to RQ; without it, it
runs the jobs itself in an embedded executor (and resumes jobs left ``queued`` by a previous
process). Either way the database row is written first and committed only after the job was
handed over, so a failed hand-over leaves nothing behind.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from service.jobs import keys
from service.jobs.config import JobSettings
from service.jobs.dispatch import Dispatcher, EmbeddedDispatcher, RQDispatcher
from service.jobs.errors import JobAlreadyFinished, JobNotFound
from service.jobs.reaper import Reaper
from service.jobs.runner import JobRuntime, execute_job, stop_active
from service.jobs.states import JobState
from service.jobs.store import JobStore
from service.jobs.tasks.common import remove_staging
from service.models_db import Job

log = logging.getLogger("medseglens.jobs")


class JobService:
    """Jobs for one API process."""

    def __init__(
        self,
        factory: sessionmaker[Session],
        *,
        redis_url: str | None,
        data_dir: Path,
        zoo: Path,
        device: str = "cpu",
        settings: JobSettings | None = None,
        on_sae_published: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings or JobSettings()
        self.store = JobStore(factory)
        self.zoo = zoo
        self.on_sae_published = on_sae_published
        self.dispatcher: Dispatcher
        if redis_url:
            self.dispatcher = RQDispatcher(redis_url, job_timeout_s=self.settings.timeout_s)
            self.runtime: JobRuntime | None = None
        else:
            self.runtime = JobRuntime(
                store=self.store,
                settings=self.settings,
                zoo=zoo,
                data_dir=data_dir,
                device=device,
                worker_id=keys.worker_name(self.settings.queue, "embedded"),
            )
            self.runtime.on_finished.append(self._finished)
            self.dispatcher = EmbeddedDispatcher(
                partial(execute_job, rt=self.runtime),
                partial(stop_active, self.runtime),
                workers=self.settings.embedded_workers,
            )
        self.reaper = Reaper(
            self.store,
            self.settings,
            self.dispatcher.enqueue,
            extra=[self.sync_saes],
            cleanup=lambda job_id: remove_staging(zoo, data_dir, job_id),
        )
        self._known_saes: set[str] = set()
        self._sync_lock = threading.Lock()

    @property
    def mode(self) -> str:
        return self.dispatcher.mode

    def start(self) -> None:
        """Start the reaper; in embedded mode, resume jobs a previous process left queued."""
        if self.runtime is not None:
            for job_id in self.store.ids_in_state(JobState.QUEUED, queue=self.settings.queue):
                job = self.store.get(job_id)
                self.dispatcher.enqueue(job_id, (job.attempts if job else 0) + 1, self.settings.queue)
        if not self.reaper.is_alive():
            self.reaper.start()

    def close(self) -> None:
        """Stop the reaper and the dispatcher (embedded jobs running now go back to ``queued``)."""
        self.reaper.stop()
        self.dispatcher.close()

    # -- API operations ----------------------------------------------------------------------------
    def submit(
        self, kind: str, params: dict[str, Any], idempotency_key: str | None = None
    ) -> tuple[Job, bool]:
        """Record and dispatch a job; ``(job, created)``; a known ``idempotency_key`` returns its job."""
        queue = self.settings.queue
        if self.runtime is None:
            return self.store.create(
                kind,
                params,
                queue=queue,
                idempotency_key=idempotency_key,
                before_commit=lambda job: self.dispatcher.enqueue(job.id, 1, queue),
            )
        job, created = self.store.create(kind, params, queue=queue, idempotency_key=idempotency_key)
        if created:  # the embedded executor reads the row, so hand over after the commit
            self.dispatcher.enqueue(job.id, 1, queue)
        return job, created

    def get(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        if job is None:
            raise JobNotFound(f"No job {job_id}; list jobs with GET /v1/jobs.")
        return job

    def list(self, **filters: Any) -> tuple[list[Job], int]:
        return self.store.list(**filters)

    def cancel(self, job_id: str) -> Job:
        """Cancel a queued or running job (idempotent for cancelled ones); 409 when it already ended."""
        job = self.store.request_cancel(job_id)
        if job is None:
            raise JobNotFound(f"No job {job_id}; list jobs with GET /v1/jobs.")
        if job.state in (JobState.SUCCEEDED.value, JobState.FAILED.value):
            raise JobAlreadyFinished(f"Job {job_id} already {job.state}; there is nothing to cancel.")
        return job

    # -- SAE registration --------------------------------------------------------------------------
    def _finished(self, job_id: str, kind: str, state: JobState, ref: str | None) -> None:
        if state is JobState.SUCCEEDED and ref and ref.startswith("/v1/saes/"):
            self.sync_saes()

    def sync_saes(self) -> None:
        """Tell ``on_sae_published`` about SAE folders that appeared in ``ZOO/saes`` (from any worker)."""
        if self.on_sae_published is None:
            return
        root = self.zoo / "saes"
        if not root.is_dir():
            return
        with self._sync_lock:
            current = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
            for name in sorted(current - self._known_saes):
                if (root / name / "card.json").is_file():
                    self.on_sae_published(name)
                    self._known_saes.add(name)
