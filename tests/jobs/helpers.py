"""Shared helpers of the job tests: Redis access, a tiny zoo, an app with a stub pool, a worker process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_TEST_REDIS = "redis://127.0.0.1:6379/14"
FAST_JOB_ENV = {
    "MEDSEGLENS_JOB_HEARTBEAT_S": "0.3",
    "MEDSEGLENS_JOB_STALE_AFTER_S": "2",
    "MEDSEGLENS_JOB_POLL_S": "0.1",
    "MEDSEGLENS_JOB_PROGRESS_MIN_S": "0.2",
    "MEDSEGLENS_TEST_STEP_S": "0.05",
    "MEDSEGLENS_JOB_WARM_IMPORTS": "0",  # the fake trainer needs no torch: start workers in ~2 s
}


def require_redis() -> str:
    """The test Redis URL (db flushed); skips when Redis is absent unless MEDSEGLENS_REQUIRE_SERVICES=1."""
    import redis

    url = os.environ.get("MEDSEGLENS_TEST_REDIS_URL", DEFAULT_TEST_REDIS)
    try:
        redis.Redis.from_url(url, socket_connect_timeout=1).flushdb()
    except (redis.exceptions.RedisError, OSError) as exc:
        if os.environ.get("MEDSEGLENS_REQUIRE_SERVICES") == "1":
            pytest.fail(f"Redis at {url} is required (MEDSEGLENS_REQUIRE_SERVICES=1) but unreachable: {exc}")
        pytest.skip(f"Redis at {url} unreachable: {exc}")
    return url


def make_zoo(root: Path) -> Path:
    """``root/models/tiny/card.json`` and ``root/data/train/adult/`` (the fake trainer reads neither file)."""
    (root / "models" / "tiny").mkdir(parents=True)
    (root / "models" / "tiny" / "card.json").write_text(json.dumps({"id": "tiny", "arch": "unet"}))
    (root / "data" / "train" / "adult").mkdir(parents=True)
    (root / "saes").mkdir()
    return root


def stub_pool(zoo: Path) -> Any:
    from service.pool import ModelPool

    def loader(path: Path) -> tuple[Any, dict]:
        return object(), json.loads((path / "card.json").read_text())

    return ModelPool(zoo, device="cpu", model_loader=loader, sae_loader=loader)


class Api:
    """A running app (TestClient with lifespan) and keys with the train and read scopes."""

    def __init__(self, data_dir: Path, zoo: Path, redis_url: str | None) -> None:
        from fastapi.testclient import TestClient

        from service.app import create_app
        from service.auth import create_key
        from service.config import Settings
        from service.db import session_scope

        settings = Settings(data_dir=data_dir, zoo=zoo, redis_url=redis_url, device="cpu")
        self.app = create_app(settings, pool=stub_pool(zoo))
        self.client: Any = TestClient(self.app).__enter__()
        with session_scope(self.app.state.sessionmaker) as s:
            self.train_key = create_key(s, "t", "train,read")[1]
            self.read_key = create_key(s, "r", "read")[1]

    def h(self, key: str | None = None, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.train_key}", **extra}

    def submit(self, body: dict[str, Any] | None = None, **headers: str) -> Any:
        payload = {"model_id": "tiny", "cohorts": ["adult"], "tokens": 10, "expansion": 2, "k": 2}
        return self.client.post(
            "/v1/jobs/sae-training", json={**payload, **(body or {})}, headers=self.h(**headers)
        )

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.client.get(f"/v1/jobs/{job_id}", headers=self.h(self.read_key))
        assert r.status_code == 200, r.text
        return r.json()

    def wait(
        self, job_id: str, pred: Callable[[dict[str, Any]], bool], timeout: float = 20.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if pred(job):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting on job {job_id}: {job}")
            time.sleep(0.05)

    def close(self) -> None:
        """Run the app's shutdown (idempotent)."""
        if self.client is not None:
            self.client.__exit__(None, None, None)
            self.client = None


def worker_cmd(*args: str) -> list[str]:
    """The real ``medseglens worker`` command (the installed script, else the same entry point)."""
    script = Path(sys.executable).with_name("medseglens")
    if script.exists():
        return [str(script), "worker", *args]
    return [
        sys.executable,
        "-c",
        "import sys; sys.argv[0] = 'medseglens'; from service.cli import main; main()",
        "worker",
        *args,
    ]


def start_worker(
    data_dir: Path, zoo: Path, redis_url: str, extra_env: dict[str, str] | None = None
) -> subprocess.Popen:
    env = {**os.environ, **FAST_JOB_ENV, **(extra_env or {})}
    env.update(
        {"MEDSEGLENS_DATA_DIR": str(data_dir), "MEDSEGLENS_REDIS_URL": redis_url, "MEDSEGLENS_DEVICE": "cpu"}
    )
    # The installed console script does not put the checkout on sys.path; --import needs tests.jobs.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.pop("MEDSEGLENS_DATABASE_URL", None)
    cmd = worker_cmd("--zoo", str(zoo), "--import", "tests.jobs.fake_tasks")
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def stop_worker(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.stdout.read() if proc.stdout else ""


def published_saes(zoo: Path) -> list[str]:
    return sorted(p.name for p in (zoo / "saes").iterdir())
