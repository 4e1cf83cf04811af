"""Job records in the SQL database, the source of truth for every job.

Every state change is one conditional ``UPDATE ... WHERE state = <expected>`` so that the API,
several workers and several reapers can race on one row and exactly one of them wins. Times
are timezone-aware UTC (``service.models_db.utcnow``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from service.audit import record_job
from service.db import session_scope
from service.jobs.errors import IdempotencyConflict
from service.jobs.states import JobState
from service.models_db import Job, utcnow
from service.storage import new_id

BeforeCommit = Callable[[Job], None]


@dataclass(frozen=True)
class Heartbeat:
    """What a running job learns each time it writes its heartbeat."""

    owned: bool  # False once the row left ``running`` for this worker (reaped or finished elsewhere)
    cancel_requested: bool


@dataclass(frozen=True)
class StaleJob:
    """A running job whose heartbeat is older than the cut-off."""

    id: str
    attempts: int
    heartbeat: datetime | None
    worker_id: str | None
    cancel_requested: bool
    queue: str


class JobStore:
    """CRUD and state transitions of :class:`service.models_db.Job` rows over a session factory."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory

    def _session(self) -> AbstractContextManager[Session]:
        return session_scope(self.factory)

    # -- submission ------------------------------------------------------------------------------
    def create(
        self,
        kind: str,
        params: dict[str, Any],
        *,
        queue: str,
        idempotency_key: str | None = None,
        before_commit: BeforeCommit | None = None,
    ) -> tuple[Job, bool]:
        """Insert a queued job; returns ``(job, created)``.

        With ``idempotency_key``, an existing job under that key is returned (``created=False``)
        when it has the same kind and params, else :class:`IdempotencyConflict`.
        ``before_commit(job)`` runs after the INSERT and before COMMIT (the dispatcher enqueues
        there): if it raises, the transaction rolls back and no row is left.
        """
        if idempotency_key is not None:
            existing = self._by_key(idempotency_key, kind, params)
            if existing is not None:
                return existing, False
        session = self.factory()
        try:
            job = Job(id=new_id(), kind=kind, params=params, queue=queue, idempotency_key=idempotency_key)
            job.state = JobState.QUEUED.value
            session.add(job)
            session.flush()  # the INSERT: a duplicate key fails here, before anything is enqueued
            record_job(session, job.id, JobState.QUEUED.value)
            if before_commit is not None:
                before_commit(job)
            session.commit()
            return job, True
        except IntegrityError:
            session.rollback()
            if idempotency_key is None:
                raise
            existing = self._by_key(idempotency_key, kind, params)
            if existing is None:
                raise
            return existing, False
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def _by_key(self, key: str, kind: str, params: dict[str, Any]) -> Job | None:
        with self._session() as s:
            job = s.scalars(select(Job).where(Job.idempotency_key == key)).first()
        if job is not None and (job.kind != kind or job.params != params):
            raise IdempotencyConflict(
                f"Idempotency-Key {key!r} was already used for a different request (job {job.id}, "
                f"kind {job.kind}). Use a new key for a new request."
            )
        return job

    # -- reads -----------------------------------------------------------------------------------
    def get(self, job_id: str) -> Job | None:
        """The job row, detached, or None."""
        with self._session() as s:
            return s.get(Job, job_id)

    def list(
        self, *, state: str | None = None, kind: str | None = None, limit: int = 50, offset: int = 0
    ) -> tuple[list[Job], int]:
        """One page of jobs, newest first, and the total matching ``state``/``kind``."""
        conds = []
        if state is not None:
            conds.append(Job.state == state)
        if kind is not None:
            conds.append(Job.kind == kind)
        with self._session() as s:
            total = s.scalar(select(func.count()).select_from(Job).where(*conds)) or 0
            rows = s.scalars(
                select(Job).where(*conds).order_by(Job.created.desc(), Job.id).limit(limit).offset(offset)
            ).all()
        return list(rows), int(total)

    def ids_in_state(self, state: JobState, *, queue: str | None = None) -> list[str]:
        """Ids of jobs in ``state`` (oldest first), optionally on one queue."""
        conds = [Job.state == state.value]
        if queue is not None:
            conds.append(Job.queue == queue)
        with self._session() as s:
            return list(s.scalars(select(Job.id).where(*conds).order_by(Job.created)).all())

    # -- worker side -----------------------------------------------------------------------------
    def claim(self, job_id: str, worker_id: str) -> Job | None:
        """``queued -> running`` for ``worker_id``; None when the job is not queued (cancelled, taken)."""
        now = utcnow()
        with self._session() as s:
            res = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == JobState.QUEUED.value)
                .values(
                    state=JobState.RUNNING.value,
                    worker_id=worker_id,
                    started=now,
                    heartbeat=now,
                    finished=None,
                    error=None,
                    attempts=Job.attempts + 1,
                )
            )
            if res.rowcount != 1:
                return None
            record_job(s, job_id, JobState.RUNNING.value)
        return self.get(job_id)

    def beat(
        self,
        job_id: str,
        worker_id: str,
        *,
        progress: float | None = None,
        metrics: dict[str, Any] | None = None,
        log_tail: str | None = None,
    ) -> Heartbeat:
        """Write the heartbeat (and the latest progress, if given) of a job this worker runs."""
        values: dict[str, Any] = {"heartbeat": utcnow()}
        if progress is not None:
            values["progress"] = min(max(float(progress), 0.0), 1.0)
        if metrics is not None:
            values["metrics"] = metrics
        if log_tail is not None:
            values["log_tail"] = log_tail
        with self._session() as s:
            res = s.execute(update(Job).where(*self._owned(job_id, worker_id)).values(**values))
            owned = res.rowcount == 1
            flag = s.scalar(select(Job.cancel_requested).where(Job.id == job_id))
        return Heartbeat(owned=owned, cancel_requested=bool(flag))

    def cancel_requested(self, job_id: str) -> bool:
        """The cancel flag (one indexed read; polled by running jobs)."""
        with self._session() as s:
            return bool(s.scalar(select(Job.cancel_requested).where(Job.id == job_id)))

    def finish(
        self,
        job_id: str,
        worker_id: str,
        state: JobState,
        *,
        error: str | None = None,
        result_ref: str | None = None,
        progress: float | None = None,
        metrics: dict[str, Any] | None = None,
        log_tail: str | None = None,
    ) -> bool:
        """``running -> state`` (terminal) for the owning worker; False if it no longer owns the job."""
        if not state.terminal:
            raise ValueError(f"finish() needs a terminal state, got {state}")
        values: dict[str, Any] = {"state": state.value, "finished": utcnow(), "error": error}
        if result_ref is not None:
            values["result_ref"] = result_ref
        if progress is not None:
            values["progress"] = progress
        if metrics is not None:
            values["metrics"] = metrics
        if log_tail is not None:
            values["log_tail"] = log_tail
        with self._session() as s:
            res = s.execute(update(Job).where(*self._owned(job_id, worker_id)).values(**values))
            if res.rowcount == 1:
                record_job(s, job_id, state.value)
            return res.rowcount == 1

    def release(self, job_id: str, worker_id: str) -> bool:
        """``running -> queued`` for the owning worker (it is shutting down); keeps ``attempts``."""
        with self._session() as s:
            res = s.execute(
                update(Job)
                .where(*self._owned(job_id, worker_id))
                .values(state=JobState.QUEUED.value, worker_id=None, heartbeat=None, started=None)
            )
            if res.rowcount == 1:
                record_job(s, job_id, JobState.QUEUED.value)
            return res.rowcount == 1

    @staticmethod
    def _owned(job_id: str, worker_id: str) -> tuple[Any, ...]:
        return (Job.id == job_id, Job.state == JobState.RUNNING.value, Job.worker_id == worker_id)

    # -- API side --------------------------------------------------------------------------------
    def request_cancel(self, job_id: str) -> Job | None:
        """Cancel: a queued job ends ``cancelled`` now; a running one gets its cancel flag set.

        Returns the job after the change (None if unknown). Terminal jobs are returned unchanged.
        """
        with self._session() as s:
            res = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == JobState.QUEUED.value)
                .values(state=JobState.CANCELLED.value, finished=utcnow(), cancel_requested=True)
            )
            if res.rowcount == 1:
                record_job(s, job_id, JobState.CANCELLED.value)
            s.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == JobState.RUNNING.value)
                .values(cancel_requested=True)
            )
        return self.get(job_id)

    # -- reaper ----------------------------------------------------------------------------------
    def stale(self, cutoff: datetime) -> list[StaleJob]:
        """Running jobs whose heartbeat is older than ``cutoff`` (or missing)."""
        with self._session() as s:
            rows = s.scalars(
                select(Job).where(
                    Job.state == JobState.RUNNING.value, (Job.heartbeat < cutoff) | (Job.heartbeat.is_(None))
                )
            ).all()
        return [
            StaleJob(r.id, r.attempts, r.heartbeat, r.worker_id, r.cancel_requested, r.queue) for r in rows
        ]

    def end_stale(self, job: StaleJob, state: JobState, reason: str | None) -> bool:
        """Move a stale job to ``state`` (``failed``, ``cancelled`` or back to ``queued``) if untouched since.

        The WHERE clause repeats the heartbeat and worker seen, so a job that came back to life
        (or that another reaper already handled) is left alone.
        """
        values: dict[str, Any] = {"state": state.value, "error": reason, "worker_id": None}
        values["finished"] = utcnow() if state.terminal else None
        hb = Job.heartbeat.is_(None) if job.heartbeat is None else Job.heartbeat == job.heartbeat
        with self._session() as s:
            res = s.execute(
                update(Job)
                .where(
                    Job.id == job.id, Job.state == JobState.RUNNING.value, hb, Job.worker_id == job.worker_id
                )
                .values(**values)
            )
            if res.rowcount == 1:
                record_job(s, job.id, state.value)
            return res.rowcount == 1

    def fail_queued(self, job_id: str, reason: str) -> bool:
        """``queued -> failed`` (a re-queue that could not be enqueued)."""
        with self._session() as s:
            res = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.state == JobState.QUEUED.value)
                .values(state=JobState.FAILED.value, finished=utcnow(), error=reason)
            )
            if res.rowcount == 1:
                record_job(s, job_id, JobState.FAILED.value)
            return res.rowcount == 1
