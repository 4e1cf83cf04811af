"""Getting a job id to something that runs it: RQ on Redis, or an embedded thread pool.

Both dispatchers only carry the job id: parameters, state and progress live in the database.
Neither imports the runner: RQ finds the entry point by its dotted name (:data:`RQ_ENTRY`), and
the embedded dispatcher is handed ``execute`` and ``stop`` callables by whoever builds it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Protocol

import redis
from rq import Queue
from rq.serializers import JSONSerializer

from service.jobs import keys
from service.jobs.errors import QueueUnavailable

log = logging.getLogger("medseglens.jobs")
RQ_ENTRY = "service.jobs.bootstrap.run_rq_job"  # imported by name in the worker process


class Dispatcher(Protocol):
    """Hands job ids to workers."""

    mode: str

    def enqueue(self, job_id: str, attempt: int, queue: str) -> None:
        """Queue ``job_id`` (``attempt`` starts at 1); raises :class:`QueueUnavailable` when it cannot."""

    def ping(self) -> bool:
        """True when the queue backend answers."""

    def depth(self, queue: str) -> int:
        """Jobs waiting on ``queue`` (-1 when unknown)."""

    def close(self) -> None:
        """Release connections/threads."""


def redis_connection(url: str) -> redis.Redis:
    """A Redis client with short timeouts, so a dead server is noticed in seconds, not minutes."""
    return redis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=10, health_check_interval=15)


class RQDispatcher:
    """Enqueue on RQ (payload: the job id, JSON-serialised) for ``medseglens worker`` processes."""

    mode = "rq"

    def __init__(self, url: str, *, job_timeout_s: float) -> None:
        self.url = url
        self.connection = redis_connection(url)
        # RQ's own timeout is a backstop for plain RQ workers; ours enforce MEDSEGLENS_JOB_TIMEOUT_S.
        self.job_timeout = int(job_timeout_s) + 300

    def queue(self, queue: str) -> Queue:
        return Queue(keys.rq_queue_name(queue), connection=self.connection, serializer=JSONSerializer)

    def enqueue(self, job_id: str, attempt: int, queue: str) -> None:
        try:
            self.queue(queue).enqueue_call(
                RQ_ENTRY,
                args=(job_id,),
                job_id=keys.rq_job_id(job_id, attempt),
                timeout=self.job_timeout,
                result_ttl=3600,
                failure_ttl=7 * 86400,
                description=f"medseglens job {job_id} attempt {attempt}",
            )
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise QueueUnavailable(
                f"The job queue (Redis) is unreachable ({type(exc).__name__}); nothing was recorded. "
                "Retry later; operators: check MEDSEGLENS_REDIS_URL and the Redis server."
            ) from exc

    def ping(self) -> bool:
        try:
            return bool(self.connection.ping())
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            return False

    def depth(self, queue: str) -> int:
        try:
            return int(self.queue(queue).count)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
            return -1

    def close(self) -> None:
        self.connection.close()


class EmbeddedDispatcher:
    """Run jobs in threads of this process (no Redis): the same runner, states, progress and cancel."""

    mode = "embedded"

    def __init__(
        self, execute: Callable[[str], object], stop: Callable[[], object], *, workers: int = 1
    ) -> None:
        """``execute(job_id)`` runs one attempt; ``stop()`` asks the attempts running now to stop."""
        self.execute = execute
        self.stop = stop
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="medseglens-job")
        self.futures: dict[str, Future[object]] = {}

    def enqueue(self, job_id: str, attempt: int, queue: str) -> None:
        self.futures = {k: f for k, f in self.futures.items() if not f.done()}
        self.futures[job_id] = self.pool.submit(self.execute, job_id)

    def ping(self) -> bool:
        return True

    def depth(self, queue: str) -> int:
        return sum(not f.running() and not f.done() for f in self.futures.values())

    def close(self, wait_s: float = 30.0) -> None:
        """Stop: queued futures are dropped (their rows stay ``queued`` and resume on the next start),
        running jobs are asked to stop and go back to ``queued``; waits up to ``wait_s`` for them."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.stop()
        wait(list(self.futures.values()), timeout=wait_s)
