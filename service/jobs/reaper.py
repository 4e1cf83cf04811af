"""The reaper: running jobs whose heartbeat stopped are failed, or re-queued while attempts remain.

A worker writes its job's heartbeat every ``MEDSEGLENS_JOB_HEARTBEAT_S``; one killed with SIGKILL
(or cut off from the database) stops doing so. Every API process and every worker runs a reaper
thread; conditional updates make sure each dead job is handled exactly once.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import timedelta

import redis
from sqlalchemy.exc import SQLAlchemyError

from service.jobs.config import JobSettings
from service.jobs.errors import QueueUnavailable
from service.jobs.states import JobState
from service.jobs.store import JobStore
from service.models_db import utcnow

log = logging.getLogger("medseglens.jobs")
Enqueue = Callable[[str, int, str], None]  # (job_id, attempt, queue)


def reap_once(
    store: JobStore,
    settings: JobSettings,
    enqueue: Enqueue | None,
    cleanup: Callable[[str], None] | None = None,
) -> dict[str, str]:
    """Handle every stale running job once; returns ``{job_id: new state}`` for those this call moved.

    ``cleanup(job_id)`` removes a dead attempt's staging: for each job moved to ``failed`` or
    ``cancelled``, and for a re-queued one before it is enqueued again (so no attempt of it runs).
    """
    cutoff = utcnow() - timedelta(seconds=settings.stale_after_s)
    moved: dict[str, str] = {}
    for job in store.stale(cutoff):
        seen = job.heartbeat.isoformat() if job.heartbeat else "never"
        if job.cancel_requested:
            if store.end_stale(job, JobState.CANCELLED, None):
                moved[job.id] = JobState.CANCELLED.value
            continue
        retry = enqueue is not None and job.attempts < settings.max_attempts
        if retry and store.end_stale(job, JobState.QUEUED, None):
            if cleanup is not None:  # the dead attempt's staging goes before the next one can start
                cleanup(job.id)
            try:
                enqueue(job.id, job.attempts + 1, job.queue)  # type: ignore[misc]
                moved[job.id] = JobState.QUEUED.value
                log.warning(
                    "job %s: worker %s went silent (last heartbeat %s); re-queued",
                    job.id,
                    job.worker_id,
                    seen,
                )
            except QueueUnavailable:
                store.fail_queued(job.id, "its worker died and the queue was unreachable to retry it")
                moved[job.id] = JobState.FAILED.value
            continue
        reason = (
            f"worker {job.worker_id} stopped sending heartbeats (last at {seen}, over "
            f"{settings.stale_after_s:g} s ago): it was killed or lost its connection "
            f"(attempt {job.attempts} of {settings.max_attempts})"
        )
        if not retry and store.end_stale(job, JobState.FAILED, reason):
            moved[job.id] = JobState.FAILED.value
            log.warning("job %s: %s", job.id, reason)
    if cleanup is not None:
        for job_id, state in moved.items():
            if state != JobState.QUEUED.value:
                cleanup(job_id)
    return moved


class Reaper(threading.Thread):
    """Runs :func:`reap_once` every ``interval_s`` (default: a quarter of the stale limit, >= 0.5 s),
    then ``extra`` callbacks (the API uses one to register SAEs finished by remote workers)."""

    def __init__(
        self,
        store: JobStore,
        settings: JobSettings,
        enqueue: Enqueue | None,
        *,
        interval_s: float | None = None,
        extra: list[Callable[[], None]] | None = None,
        cleanup: Callable[[str], None] | None = None,
    ) -> None:
        super().__init__(name="medseglens-reaper", daemon=True)
        self.store, self.settings, self.enqueue = store, settings, enqueue
        self.interval_s = interval_s if interval_s is not None else max(settings.stale_after_s / 4, 0.5)
        self.extra = extra or []
        self.cleanup = cleanup
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            try:
                reap_once(self.store, self.settings, self.enqueue, self.cleanup)
                for fn in self.extra:
                    fn()
            except (SQLAlchemyError, redis.exceptions.RedisError, OSError) as exc:
                log.warning("reaper: %s: %s (retrying)", type(exc).__name__, exc)

    def stop(self) -> None:
        self.stopped.set()
