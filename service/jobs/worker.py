"""``medseglens worker``: an RQ worker that runs jobs in its own process, warm between jobs.

RQ's default ``Worker`` forks a child per job; the child re-imports torch and reloads weights
(seconds per job). :class:`JobWorker` is an RQ ``SimpleWorker`` (no fork): imports, models and
SAEs stay resident. It keeps RQ's worker heartbeat alive from a side thread while a long job
runs, leaves timeouts and cancel to our runner (no SIGALRM death penalty), and
:func:`run_worker` reconnects with back-off when Redis goes away.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from types import FrameType
from typing import Any

import redis
from rq import Queue, SimpleWorker
from rq.job import Job as RQJob
from rq.serializers import JSONSerializer
from rq.timeouts import BaseDeathPenalty

from service.jobs import keys
from service.jobs.bootstrap import install_runtime
from service.jobs.context import StopReason
from service.jobs.dispatch import RQDispatcher, redis_connection
from service.jobs.reaper import Reaper
from service.jobs.resources import warm_imports
from service.jobs.runner import JobRuntime, stop_active
from service.jobs.tasks.common import remove_staging

log = logging.getLogger("medseglens.jobs")


class NoDeathPenalty(BaseDeathPenalty):
    """No SIGALRM: the runner's watcher enforces ``MEDSEGLENS_JOB_TIMEOUT_S`` through ``should_stop``."""

    def setup_death_penalty(self) -> None:
        return None

    def cancel_death_penalty(self) -> None:
        return None


class JobWorker(SimpleWorker):
    """A non-forking RQ worker whose RQ heartbeats continue while a job runs."""

    death_penalty_class = NoDeathPenalty

    def execute_job(self, job: RQJob, queue: Queue) -> None:
        execution = self.prepare_execution(job)
        done = threading.Event()

        def beat() -> None:
            while not done.wait(max(self.job_monitoring_interval, 1)):
                try:
                    self.maintain_heartbeats(job, execution)
                except redis.exceptions.RedisError as exc:  # Redis blip: the DB heartbeat is what counts
                    self.log.warning("rq heartbeat failed: %s", exc)

        t = threading.Thread(target=beat, name="rq-heartbeat", daemon=True)
        t.start()
        try:
            self.perform_job(job, queue, execution)
        finally:
            done.set()
            t.join()
        self.set_state("idle")


def run_worker(
    redis_url: str,
    runtime: JobRuntime,
    *,
    queue: str,
    burst: bool = False,
    warm: bool = True,
    max_wait_s: float = 30.0,
) -> int:
    """Work on ``queue`` until SIGINT/SIGTERM (or, with ``burst``, until it is empty); returns jobs run.

    Lost Redis connections are retried with exponential back-off up to ``max_wait_s`` between tries.
    """
    install_runtime(runtime)
    if runtime.settings.warm_imports:
        log.info("warm-up imports: %s", warm_imports())
    stopping = threading.Event()
    dispatcher = RQDispatcher(redis_url, job_timeout_s=runtime.settings.timeout_s)
    runtime.requeue = dispatcher.enqueue
    reaper = Reaper(
        runtime.store,
        runtime.settings,
        dispatcher.enqueue,
        cleanup=lambda job_id: remove_staging(runtime.zoo, runtime.data_dir, job_id),
    )
    reaper.start()
    jobs_run, wait = 0, 1.0
    try:
        while not stopping.is_set():
            try:
                # RQ's Worker talks to Redis in its constructor: a Redis that is down when the worker
                # starts (or restarts between loops) must be retried here, not kill the process.
                worker = _make_worker(redis_url, queue, runtime.worker_id)
                _install_stop_handlers(worker, runtime, stopping)
                worked = worker.work(burst=burst, logging_level="WARNING", with_scheduler=False)
                jobs_run += int(worker.successful_job_count + worker.failed_job_count)
                if burst or stopping.is_set() or worker._stop_requested:
                    break
                log.warning("worker loop ended (worked=%s); reconnecting", worked)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                log.warning("Redis unreachable (%s); retrying in %.0f s", exc, wait)
            if stopping.wait(wait):
                break
            wait = min(wait * 2, max_wait_s)
    finally:
        reaper.stop()
        dispatcher.close()
    return jobs_run


def _make_worker(redis_url: str, queue: str, name: str) -> JobWorker:
    conn = redis_connection(redis_url)
    q = Queue(keys.rq_queue_name(queue), connection=conn, serializer=JSONSerializer)
    # A restarted worker with the same pid-based name must not clash with its own stale registration.
    return JobWorker(
        [q], connection=conn, name=f"{name}.{int(time.time() * 1000) % 10**8}", serializer=JSONSerializer
    )


def _install_stop_handlers(worker: JobWorker, runtime: JobRuntime, stopping: threading.Event) -> None:
    """SIGINT/SIGTERM: stop taking jobs and hand a running job back to the queue (it is re-queued)."""

    def handler(signum: int, frame: FrameType | None) -> Any:
        stopping.set()
        stop_active(runtime, StopReason.SHUTDOWN)
        return worker.request_stop(signum, frame)

    worker._install_signal_handlers = lambda: (  # type: ignore[method-assign]
        signal.signal(signal.SIGINT, handler),
        signal.signal(signal.SIGTERM, handler),
    )
