"""Job-system benchmark; prints JSON.

- ``submit_latency_ms``: ``JobService.submit`` (DB insert + RQ enqueue + commit, what
  ``POST /v1/jobs/*`` does) on SQLite + the local Redis.
- ``first_progress_s``: submit -> first progress report in the job record, for
  (a) our warm, non-forking ``medseglens worker`` (torch and the core imported once at start) and
  (b) RQ's default fork-per-job ``Worker``, whose child imports torch and the core on every job.
  The job is a probe that imports what an SAE training job needs (torch, ``medseglens_core.models``,
  ``medseglens_core.sae``) and reports progress at once. ``speedup`` = fork / warm (target >= 5).

Usage: ``python benchmarks/jobs.py [--jobs 3] [--redis redis://127.0.0.1:6379/13]``.
Needs Redis; uses a temporary data directory and flushes the given Redis database.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.jobs.context import JobContext  # noqa: E402
from service.jobs.tasks import register_task  # noqa: E402


def probe(params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """What an SAE job does before its first step: import torch and the core, then report."""
    import torch  # noqa: F401

    import medseglens_core.models  # noqa: F401
    import medseglens_core.sae  # noqa: F401

    ctx.progress({"step": 1, "total_steps": 1})
    return {}


register_task("sae_training", probe, replace=True)

FORK_WORKER = """
import sys
sys.path.insert(0, {root!r})
import benchmarks.jobs  # registers the probe; torch is NOT imported here
import redis
from rq import Queue, Worker
from rq.serializers import JSONSerializer
from service.jobs import keys
r = redis.Redis.from_url({url!r})
q = Queue(keys.rq_queue_name({queue!r}), connection=r, serializer=JSONSerializer)
Worker([q], connection=r, serializer=JSONSerializer).work(logging_level="WARNING")
"""


def _env(tmp: Path, url: str, queue: str) -> dict[str, str]:
    return {
        **os.environ,
        "MEDSEGLENS_DATA_DIR": str(tmp / "data"),
        "MEDSEGLENS_ZOO": str(tmp / "zoo"),
        "MEDSEGLENS_REDIS_URL": url,
        "MEDSEGLENS_DEVICE": "cpu",
        "MEDSEGLENS_JOB_QUEUE": queue,
        "MEDSEGLENS_JOB_POLL_S": "0.02",
        "MEDSEGLENS_JOB_PROGRESS_MIN_S": "0",
        "PYTHONPATH": str(ROOT),
    }


def _first_progress(service: Any, timeout: float = 120.0) -> float:
    t0 = time.perf_counter()
    job, _ = service.submit("sae_training", {})
    while time.perf_counter() - t0 < timeout:
        row = service.store.get(job.id)
        if row is not None and (row.progress > 0 or row.metrics.get("step")):
            return time.perf_counter() - t0
        time.sleep(0.01)
    raise TimeoutError(f"job {job.id} reported no progress in {timeout} s")


def _service(tmp: Path, url: str, queue: str) -> Any:
    from service.db import create_tables, make_engine, make_sessionmaker
    from service.jobs.config import JobSettings
    from service.jobs.service import JobService

    (tmp / "data").mkdir(parents=True, exist_ok=True)
    engine = make_engine(f"sqlite:///{tmp / 'data' / 'medseglens.db'}")
    create_tables(engine)
    return JobService(
        make_sessionmaker(engine),
        redis_url=url,
        data_dir=tmp / "data",
        zoo=tmp / "zoo",
        settings=JobSettings(queue=queue),
    )


def _measure(cmd: list[str], tmp: Path, url: str, queue: str, jobs: int) -> list[float]:
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=_env(tmp, url, queue), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        service = _service(tmp, url, queue)
        _first_progress(service)  # worker start-up (and, for the warm worker, its one-time import)
        return [_first_progress(service) for _ in range(jobs)]
    finally:
        proc.terminate()
        proc.wait(20)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=3)
    ap.add_argument(
        "--redis", default=os.environ.get("MEDSEGLENS_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
    )
    args = ap.parse_args()
    import redis

    redis.Redis.from_url(args.redis).flushdb()
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        service = _service(tmp, args.redis, "bench-submit")
        lat = []
        for _ in range(50):
            t0 = time.perf_counter()
            service.submit("sae_training", {})
            lat.append((time.perf_counter() - t0) * 1000)
        warm_cmd = [
            sys.executable,
            "-c",
            "import sys; sys.argv[0]='medseglens'; from service.cli import main; main()",
            "worker",
            "--import",
            "benchmarks.jobs",
        ]
        warm = _measure(warm_cmd, tmp, args.redis, "bench-warm", args.jobs)
        fork_cmd = [
            sys.executable,
            "-c",
            FORK_WORKER.format(root=str(ROOT), url=args.redis, queue="bench-fork"),
        ]
        fork = _measure(fork_cmd, tmp, args.redis, "bench-fork", args.jobs)
    redis.Redis.from_url(args.redis).flushdb()
    q = statistics.quantiles(lat, n=20)
    out = {
        "submit_latency_ms": {"p50": round(statistics.median(lat), 2), "p95": round(q[18], 2), "n": len(lat)},
        "first_progress_s": {
            "warm_worker": {"median": round(statistics.median(warm), 3), "runs": [round(x, 3) for x in warm]},
            "fork_per_job_worker": {
                "median": round(statistics.median(fork), 3),
                "runs": [round(x, 3) for x in fork],
            },
        },
        "speedup_warm_vs_fork": round(statistics.median(fork) / statistics.median(warm), 1),
        "target_speedup": 5.0,
        "cpu_count": os.cpu_count(),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
