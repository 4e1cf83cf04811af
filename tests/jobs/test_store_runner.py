"""Unit tests of job records, the runner (progress rate, timeout) and the reaper, on a fresh SQLite."""

from __future__ import annotations

import math
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from rq.job import validate_job_id

from service import models_db
from service.db import create_tables, make_engine, make_sessionmaker
from service.jobs import keys
from service.jobs.config import JobSettings
from service.jobs.context import ProgressState
from service.jobs.errors import QueueUnavailable
from service.jobs.reaper import reap_once
from service.jobs.runner import JobRuntime, execute_job
from service.jobs.states import JobState
from service.jobs.store import JobStore
from service.jobs.tasks import register_task
from service.models_db import Job, utcnow


@pytest.fixture
def store(tmp_path) -> JobStore:
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    create_tables(engine)
    yield JobStore(make_sessionmaker(engine))
    engine.dispose()


def test_state_values_match_the_orm_enum_and_keys_are_valid():
    assert {s.value for s in JobState} == {s.value for s in models_db.JobState}
    validate_job_id(keys.rq_job_id("a" * 32, 3))  # raises if RQ would refuse it
    assert keys.rq_queue_name("gpu") == "medseglens.gpu"
    with pytest.raises(ValueError):
        keys.rq_queue_name("../etc")


def test_progress_state_fraction_and_json_safety():
    p = ProgressState(log_lines=2)
    p.update({"step": 5, "total_steps": 20, "loss": np.float32(0.5), "l0": math.nan})
    for i in range(3):
        p.add_line(f"line {i}")
    dirty, frac, metrics, tail = p.take()
    assert dirty and frac == 0.25 and metrics["loss"] == 0.5 and metrics["l0"] is None
    assert tail == "line 1\nline 2" and p.take()[0] is False


def test_failed_enqueue_rolls_back_the_row(store):
    def boom(job: Job) -> None:
        raise QueueUnavailable("redis down")

    with pytest.raises(QueueUnavailable):
        store.create("sae_training", {}, queue="default", idempotency_key="k", before_commit=boom)
    assert store.list() == ([], 0)
    job, created = store.create("sae_training", {}, queue="default", idempotency_key="k")
    assert created and store.create("sae_training", {}, queue="default", idempotency_key="k")[0].id == job.id


def _runtime(store: JobStore, **cfg: float) -> JobRuntime:
    settings = JobSettings(heartbeat_s=0.2, poll_s=0.05, progress_min_s=0.25, **cfg)
    return JobRuntime(
        store=store, settings=settings, zoo=store_path(), data_dir=store_path(), device="cpu", worker_id="w1"
    )


def store_path():

    return Path("/nonexistent")


def test_progress_writes_are_rate_bounded(store, monkeypatch):
    writes: list[float] = []
    real_beat = store.beat

    def counting_beat(*a, **kw):
        if "progress" in kw:
            writes.append(time.monotonic())
        return real_beat(*a, **kw)

    monkeypatch.setattr(store, "beat", counting_beat)

    def chatty(params, ctx):
        end = time.monotonic() + 1.0
        step = 0
        while time.monotonic() < end:
            step += 1
            ctx.progress({"step": step, "total_steps": 10**9})
        return {"steps": step}

    register_task("bench_chatty", chatty, replace=True)
    job, _ = store.create("bench_chatty", {}, queue="default")
    assert execute_job(job.id, _runtime(store)) is JobState.SUCCEEDED
    assert 2 <= len(writes) <= 1.0 / 0.25 + 2  # ~4 writes for >10^4 reports
    done = store.get(job.id)
    assert done.progress == 1.0 and done.metrics["result"]["steps"] > 1000


def test_attempt_over_its_timeout_fails(store):
    def slow(params, ctx):
        while not ctx.should_stop():
            time.sleep(0.01)
        return {}

    register_task("test_slow", slow, replace=True)
    job, _ = store.create("test_slow", {}, queue="default")
    t0 = time.monotonic()
    assert execute_job(job.id, _runtime(store, timeout_s=0.3)) is JobState.FAILED
    assert time.monotonic() - t0 < 2.0 and "timed out" in store.get(job.id).error


def _stale_running(store: JobStore, attempts: int = 1, cancel: bool = False, age_s: float = 10) -> str:
    job, _ = store.create("sae_training", {}, queue="q")
    assert store.claim(job.id, "dead-worker") is not None
    with store.factory() as s, s.begin():
        row = s.get(Job, job.id)
        row.heartbeat = utcnow() - timedelta(seconds=age_s)
        row.attempts, row.cancel_requested = attempts, cancel
    return job.id


def test_reaper_fails_retries_cancels_and_spares_live_jobs(store):
    cfg = JobSettings(stale_after_s=5, max_attempts=2)
    enqueued: list[tuple] = []
    dead_once = _stale_running(store, attempts=1)
    dead_twice = _stale_running(store, attempts=2)
    cancelled = _stale_running(store, cancel=True)
    alive = _stale_running(store, age_s=1)
    cleaned: list[str] = []
    order: list[str] = []

    def enqueue(*a):
        enqueued.append(a)
        order.append(f"enqueue {a[0]}")

    def cleanup(job_id):
        cleaned.append(job_id)
        order.append(f"cleanup {job_id}")

    moved = reap_once(store, cfg, enqueue, cleanup)
    assert moved == {dead_once: "queued", dead_twice: "failed", cancelled: "cancelled"}
    assert enqueued == [(dead_once, 2, "q")]
    # every dead attempt's staging goes; a re-queued job's before it is enqueued again
    assert sorted(cleaned) == sorted([dead_once, dead_twice, cancelled])
    assert order.index(f"cleanup {dead_once}") < order.index(f"enqueue {dead_once}")
    failed = store.get(dead_twice)
    assert "stopped sending heartbeats" in failed.error and failed.finished is not None
    assert store.get(alive).state == "running"
    assert reap_once(store, cfg, lambda *a: enqueued.append(a)) == {}  # handled exactly once


def test_reaper_without_retries_fails_and_a_late_finish_is_refused(store):
    job_id = _stale_running(store)
    assert reap_once(store, JobSettings(stale_after_s=5), None) == {job_id: "failed"}
    assert store.finish(job_id, "dead-worker", JobState.SUCCEEDED) is False
    assert store.get(job_id).state == "failed"
