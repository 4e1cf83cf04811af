"""Run one job attempt: claim the record, start the watcher, call the task, record the outcome.

The same :func:`execute_job` runs under RQ (``service.jobs.bootstrap.run_rq_job``, in a
``medseglens worker``) and in the embedded executor, so states, progress and cancel behave the same
in both modes. This module imports no dispatcher and no worker: they call it, never the reverse.
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from medseglens_core.errors import MedSegLensError
from service.jobs.config import JobSettings
from service.jobs.context import JobContext, JobStopped, ProgressState, StopReason, result_json
from service.jobs.resources import ResidentResources
from service.jobs.states import JobState
from service.jobs.store import JobStore
from service.jobs.tasks import get_task

log = logging.getLogger("medseglens.jobs")

FinishedHook = Callable[[str, str, JobState, str | None], None]  # (job_id, kind, state, result_ref)


@dataclass
class JobRuntime:
    """Everything a process needs to run jobs; one per worker process or API process."""

    store: JobStore
    settings: JobSettings
    zoo: Path
    data_dir: Path
    device: str
    worker_id: str
    resources: ResidentResources = field(default_factory=ResidentResources)
    on_finished: list[FinishedHook] = field(default_factory=list)
    active: dict[str, JobContext] = field(default_factory=dict)  # running here now, by job id
    requeue: Callable[[str, int, str], None] | None = None  # re-enqueue (id, attempt, queue) after a release
    row_wait_s: float = 10.0  # enqueue happens before the API commits: wait this long for the row


class Watcher(threading.Thread):
    """Heartbeat, bounded-rate progress writes, cancel polling and the deadline of one attempt."""

    def __init__(self, runtime: JobRuntime, ctx: JobContext) -> None:
        super().__init__(name=f"job-watch-{ctx.job_id[:8]}", daemon=True)
        self.rt, self.ctx = runtime, ctx
        self.done = threading.Event()
        self._last_write = 0.0
        self._last_poll = 0.0

    def run(self) -> None:
        cfg = self.rt.settings
        deadline = self.ctx.started_monotonic + cfg.timeout_s
        tick = min(cfg.poll_s, cfg.heartbeat_s, max(cfg.progress_min_s, 0.05))
        while not self.done.wait(tick):
            now = time.monotonic()
            try:
                self._tick(now)
            except SQLAlchemyError as exc:  # database blip: keep running, the next tick retries
                log.warning("job %s: heartbeat failed: %s", self.ctx.job_id, exc)
            if now > deadline:
                self.ctx.stop(StopReason.TIMEOUT)

    def _tick(self, now: float) -> None:
        cfg = self.rt.settings
        if now - self._last_write >= cfg.heartbeat_s or (
            self.ctx.state.dirty and now - self._last_write >= cfg.progress_min_s
        ):
            self.flush()
        elif now - self._last_poll >= cfg.poll_s:
            self._last_poll = now
            if self.rt.store.cancel_requested(self.ctx.job_id):
                self.ctx.stop(StopReason.CANCELLED)

    def flush(self) -> None:
        """Write heartbeat + latest progress now."""
        dirty, progress, metrics, tail = self.ctx.state.take()
        self._last_write = self._last_poll = time.monotonic()
        kw: dict[str, Any] = {"progress": progress, "metrics": metrics, "log_tail": tail} if dirty else {}
        hb = self.rt.store.beat(self.ctx.job_id, self.rt.worker_id, **kw)
        if not hb.owned:
            self.ctx.stop(StopReason.LOST)
        elif hb.cancel_requested:
            self.ctx.stop(StopReason.CANCELLED)


def _wait_for_row(store: JobStore, job_id: str, wait_s: float) -> bool:
    deadline = time.monotonic() + wait_s
    while store.get(job_id) is None:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def execute_job(job_id: str, rt: JobRuntime) -> JobState | None:
    """Run one attempt of ``job_id``; returns its final state, or None when it was not ours to run."""
    if not _wait_for_row(rt.store, job_id, rt.row_wait_s):
        log.warning("job %s: no record (its submission was rolled back); dropping it", job_id)
        return None
    job = rt.store.claim(job_id, rt.worker_id)
    if job is None:
        log.info("job %s: not queued any more (cancelled or taken); skipping", job_id)
        return None
    ctx = JobContext(
        job_id=job.id,
        kind=job.kind,
        zoo=rt.zoo,
        data_dir=rt.data_dir,
        device=rt.device,
        resources=rt.resources,
        state=ProgressState(rt.settings.log_lines),
    )
    ctx.log(f"attempt {job.attempts} started on {rt.worker_id} ({rt.device})")
    rt.active[job.id] = ctx
    watcher = Watcher(rt, ctx)
    watcher.start()
    try:
        state, error, ref, extra = _run_task(job.kind, dict(job.params), ctx)
    finally:
        watcher.done.set()
        watcher.join()
        rt.active.pop(job.id, None)
    if state is JobState.QUEUED:  # stopped by a shutdown of this process: hand the job back
        return _release(rt, job.id, job.attempts, job.queue)
    if state is JobState.SUCCEEDED:
        ctx.progress({"progress": 1.0})
    _, progress, metrics, _ = ctx.state.take()
    metrics.update(extra)
    if error:
        ctx.log(error.splitlines()[0])
    _, _, _, tail = ctx.state.take()
    recorded = rt.store.finish(
        job.id,
        rt.worker_id,
        state,
        error=error,
        result_ref=ref,
        progress=progress,
        metrics=metrics,
        log_tail=tail,
    )
    if not recorded:
        log.warning("job %s: record was taken over (reaped) before it finished as %s", job.id, state)
        return None
    log.info("job %s (%s) finished: %s", job.id, job.kind, state)
    for hook in rt.on_finished:
        hook(job.id, job.kind, state, ref)
    return state


def _run_task(
    kind: str, params: dict[str, Any], ctx: JobContext
) -> tuple[JobState, str | None, str | None, dict[str, Any]]:
    """``(state, error, result_ref, result metrics)`` of one task call; never raises."""
    try:
        task = get_task(kind)
        result = task(params, ctx)
        ctx.check()  # a task that returned after a stop request did not finish its work
    except JobStopped:
        return _stopped(ctx)
    except MedSegLensError as exc:  # the core's typed errors say what to fix: show them as is
        return JobState.FAILED, f"{type(exc).__name__}: {exc}", None, {}
    except Exception as exc:  # noqa: BLE001 - a job boundary: record any failure instead of losing it
        log.error("job %s failed:\n%s", ctx.job_id, traceback.format_exc())
        return JobState.FAILED, f"{type(exc).__name__}: {exc}", None, {}
    clean = result_json(result)
    ref = clean.pop("result_ref", None)
    return JobState.SUCCEEDED, None, ref, {"result": clean} if clean else {}


def _release(rt: JobRuntime, job_id: str, attempt: int, queue: str) -> JobState | None:
    if not rt.store.release(job_id, rt.worker_id):
        return None
    log.info("job %s: released back to the queue (process shutting down)", job_id)
    if rt.requeue is not None:
        rt.requeue(job_id, attempt + 1, queue)
    return JobState.QUEUED


def stop_active(rt: JobRuntime, reason: StopReason = StopReason.SHUTDOWN) -> int:
    """Ask every job running in this process to stop; returns how many were asked."""
    running = list(rt.active.values())
    for ctx in running:
        ctx.stop(reason)
    return len(running)


def _stopped(ctx: JobContext) -> tuple[JobState, str | None, str | None, dict[str, Any]]:
    if ctx.stop_reason is StopReason.TIMEOUT:
        return JobState.FAILED, "timed out: the attempt ran over MEDSEGLENS_JOB_TIMEOUT_S", None, {}
    if ctx.stop_reason is StopReason.SHUTDOWN:
        return JobState.QUEUED, None, None, {}
    if ctx.stop_reason is StopReason.LOST:
        return JobState.FAILED, "the job record was taken over while running", None, {}
    return JobState.CANCELLED, None, None, {}
