"""RQ mode against the real Redis (a dedicated db index, flushed per test) with real worker processes."""

from __future__ import annotations

import signal
import time

import pytest

from tests.jobs.helpers import (
    FAST_JOB_ENV,
    Api,
    make_zoo,
    published_saes,
    require_redis,
    start_worker,
    stop_worker,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def env(tmp_path, monkeypatch):
    url = require_redis()
    for k, v in FAST_JOB_ENV.items():
        monkeypatch.setenv(k, v)
    zoo = make_zoo(tmp_path / "zoo")
    api = Api(tmp_path / "data", zoo, url)
    workers: list = []
    yield api, tmp_path, zoo, url, workers
    for w in workers:
        stop_worker(w)
    api.close()
    require_redis()


def test_worker_runs_job_to_success_and_sae_is_listed(env):
    api, tmp_path, zoo, url, workers = env
    workers.append(start_worker(tmp_path / "data", zoo, url))
    job_id = api.submit({"tokens": 20}).json()["id"]
    running = api.wait(job_id, lambda j: j["metrics"].get("step", 0) > 0, timeout=60)
    assert running["state"] == "running" and running["worker_id"]
    done = api.wait(job_id, lambda j: j["state"] in ("succeeded", "failed"))
    assert done["state"] == "succeeded", done
    sae_id = done["metrics"]["result"]["sae_id"]
    assert published_saes(zoo) == [sae_id]
    assert sae_id in str(api.client.get("/v1/saes", headers=api.h(api.read_key)).json())
    # A second job on the same warm worker: no re-import, so it starts at once.
    second = api.submit({"tokens": 1}).json()["id"]
    t0 = time.monotonic()
    api.wait(second, lambda j: j["state"] == "succeeded")
    assert time.monotonic() - t0 < 3.0


def test_cancel_stops_running_job_within_seconds(env):
    api, tmp_path, zoo, url, workers = env
    workers.append(start_worker(tmp_path / "data", zoo, url))
    job_id = api.submit({"tokens": 400}).json()["id"]
    api.wait(job_id, lambda j: j["metrics"].get("step", 0) >= 2, timeout=60)
    t0 = time.monotonic()
    assert api.client.delete(f"/v1/jobs/{job_id}", headers=api.h()).status_code == 202
    done = api.wait(job_id, lambda j: j["state"] != "running", timeout=5)
    assert done["state"] == "cancelled" and time.monotonic() - t0 < 3.0
    assert published_saes(zoo) == []


def test_sigkilled_worker_job_fails_with_reason(env):
    api, tmp_path, zoo, url, workers = env
    w = start_worker(tmp_path / "data", zoo, url)
    workers.append(w)
    job_id = api.submit({"tokens": 400}).json()["id"]
    api.wait(job_id, lambda j: j["metrics"].get("step", 0) >= 2, timeout=60)
    w.send_signal(signal.SIGKILL)
    w.wait(5)
    done = api.wait(job_id, lambda j: j["state"] != "running", timeout=10)
    assert done["state"] == "failed"
    assert "stopped sending heartbeats" in done["error"] and "killed" in done["error"]
    assert published_saes(zoo) == []


def test_sigkilled_worker_job_is_retried_when_configured(env, monkeypatch):
    api, tmp_path, zoo, url, workers = env
    api.close()
    monkeypatch.setenv("MEDSEGLENS_JOB_MAX_ATTEMPTS", "2")
    api = Api(tmp_path / "data", zoo, url)
    retry_env = {"MEDSEGLENS_JOB_MAX_ATTEMPTS": "2"}
    w = start_worker(tmp_path / "data", zoo, url, retry_env)
    workers.append(w)
    try:
        job_id = api.submit({"tokens": 40}).json()["id"]
        api.wait(job_id, lambda j: j["metrics"].get("step", 0) >= 2, timeout=60)
        assert (zoo / "saes" / f".staging-{job_id}").is_dir()  # the attempt is writing its staging
        w.send_signal(signal.SIGKILL)
        w.wait(5)
        # re-queued with no worker alive: the dead attempt's staging is gone already
        api.wait(job_id, lambda j: j["state"] == "queued", timeout=10)
        assert published_saes(zoo) == []
        workers.append(start_worker(tmp_path / "data", zoo, url, retry_env))
        done = api.wait(job_id, lambda j: j["state"] in ("succeeded", "failed"), timeout=60)
        assert done["state"] == "succeeded" and done["attempts"] == 2, done
        assert published_saes(zoo) == [done["metrics"]["result"]["sae_id"]]  # no staging left
    finally:
        api.close()


def test_api_restart_keeps_jobs_and_worker_finishes_meanwhile(env):
    api, tmp_path, zoo, url, workers = env
    job_id = api.submit({"tokens": 5}).json()["id"]
    api.close()  # API down; the job is in Redis and in the database
    workers.append(start_worker(tmp_path / "data", zoo, url))
    api2 = Api(tmp_path / "data", zoo, url)
    try:
        done = api2.wait(job_id, lambda j: j["state"] == "succeeded", timeout=60)
        assert done["result_link"].startswith("/v1/saes/")
    finally:
        api2.close()


def test_redis_down_at_submit_is_503_and_leaves_no_row(tmp_path, monkeypatch):
    for k, v in FAST_JOB_ENV.items():
        monkeypatch.setenv(k, v)
    zoo = make_zoo(tmp_path / "zoo")
    api = Api(tmp_path / "data", zoo, "redis://127.0.0.1:1/0")  # nothing listens on port 1
    try:
        r = api.submit({}, **{"Idempotency-Key": "x"})
        assert r.status_code == 503, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["type"].endswith("/queue-unavailable")
        assert api.client.get("/v1/jobs", headers=api.h(api.read_key)).json()["total"] == 0
    finally:
        api.close()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redis_server(port: int):
    import subprocess

    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    import redis

    for _ in range(100):
        try:
            redis.Redis(port=port, socket_connect_timeout=0.2).ping()
            return proc
        except redis.exceptions.ConnectionError:
            time.sleep(0.05)
    raise AssertionError("private redis-server did not start")


def test_worker_reconnects_when_redis_comes_back(tmp_path, monkeypatch):
    import shutil

    require_redis()  # same skip/fail policy as the other integration tests
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server binary not installed (needed to restart a private Redis)")
    for k, v in FAST_JOB_ENV.items():
        monkeypatch.setenv(k, v)
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    server = _redis_server(port)
    zoo = make_zoo(tmp_path / "zoo")
    worker = start_worker(tmp_path / "data", zoo, url)
    api = None
    try:
        _wait_registered(port)  # the worker is up and listening (however loaded the machine)
        server.terminate()
        server.wait(5)
        time.sleep(1.5)  # the worker sees the connection drop
        server = _redis_server(port)
        api = Api(tmp_path / "data", zoo, url)
        job_id = api.submit({"tokens": 2}).json()["id"]
        assert api.wait(job_id, lambda j: j["state"] == "succeeded", timeout=40)["attempts"] == 1
    finally:
        if api is not None:
            api.close()
        log = stop_worker(worker)
        server.terminate()
        server.wait(5)
    assert "retrying" in log or "reconnect" in log.lower()


def test_worker_started_before_redis_waits_for_it(tmp_path, monkeypatch):
    """A worker whose Redis is not up yet retries with back-off instead of dying (was a traceback)."""
    import shutil

    require_redis()
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server binary not installed (needed to start a private Redis)")
    for k, v in FAST_JOB_ENV.items():
        monkeypatch.setenv(k, v)
    port = _free_port()
    url = f"redis://127.0.0.1:{port}/0"
    zoo = make_zoo(tmp_path / "zoo")
    worker = start_worker(tmp_path / "data", zoo, url)
    server = api = None
    seen: list[str] = []
    try:
        # wait (however loaded the machine) until the worker has tried Redis and said it will retry
        assert _read_until(worker, "Redis unreachable", seen, timeout=90), "".join(seen)
        assert worker.poll() is None, "worker died while Redis was down"
        server = _redis_server(port)
        api = Api(tmp_path / "data", zoo, url)
        job_id = api.submit({"tokens": 2}).json()["id"]
        assert api.wait(job_id, lambda j: j["state"] == "succeeded", timeout=60)["attempts"] == 1
    finally:
        if api is not None:
            api.close()
        log = "".join(seen) + stop_worker(worker)
        if server is not None:
            server.terminate()
            server.wait(5)
    assert "Redis unreachable" in log


def _wait_registered(port: int, timeout: float = 90.0) -> None:
    """Wait until an RQ worker has registered itself in the Redis on ``port``."""
    import redis

    r = redis.Redis(port=port)
    deadline = time.monotonic() + timeout
    while not r.smembers("rq:workers"):
        assert time.monotonic() < deadline, "the worker never registered in Redis"
        time.sleep(0.2)


def _read_until(proc, marker: str, seen: list[str], timeout: float) -> bool:
    """Read ``proc``'s output lines into ``seen`` until one contains ``marker`` (False on timeout)."""
    import threading

    found = threading.Event()

    def pump() -> None:
        for line in proc.stdout:
            seen.append(line)
            if marker in line:
                found.set()
                return

    threading.Thread(target=pump, daemon=True).start()
    return found.wait(timeout)
