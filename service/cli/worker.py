"""CLI command: ``medseglens worker`` (an RQ worker for SAE training, diff reports, recovery)."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Annotated

import typer

from service.cli import app


@app.command("worker")
def worker(
    queue: Annotated[str, typer.Option(help="Queue to work on (MEDSEGLENS_JOB_QUEUE by default).")] = "",
    device: Annotated[
        str, typer.Option(help="Torch device: auto, cpu, cuda or cuda:N (MEDSEGLENS_DEVICE).")
    ] = "",
    zoo: Annotated[Path | None, typer.Option(help="Zoo root (MEDSEGLENS_ZOO by default).")] = None,
    burst: Annotated[bool, typer.Option("--burst", help="Quit when the queue is empty.")] = False,
    imports: Annotated[
        list[str] | None,
        typer.Option("--import", help="Extra module to import at start (registers plugin task kinds)."),
    ] = None,
) -> None:
    """Run jobs from Redis in this process, keeping torch, models and SAEs loaded between jobs.

    Needs MEDSEGLENS_REDIS_URL and the same MEDSEGLENS_DATABASE_URL, data directory and zoo as
    the API (shared storage when on another machine). Stop with SIGTERM/Ctrl-C: a running job
    is handed back to the queue.
    """
    from service.config import Settings
    from service.jobs.bootstrap import runtime_from_env
    from service.jobs.config import JobSettings
    from service.jobs.keys import check_name
    from service.jobs.worker import run_worker

    settings = Settings()
    if not settings.redis_url:
        raise typer.BadParameter("set MEDSEGLENS_REDIS_URL (e.g. redis://127.0.0.1:6379/0) for a worker.")
    q = queue or JobSettings().queue
    try:
        check_name(q)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--queue") from exc
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in imports or []:
        importlib.import_module(name)
    runtime = runtime_from_env(device=device or None, zoo=zoo.absolute() if zoo else None, queue=q)
    typer.echo(f"worker {runtime.worker_id}: queue {q}, device {runtime.device}, zoo {runtime.zoo}", err=True)
    n = run_worker(settings.redis_url, runtime, queue=q, burst=burst)
    typer.echo(f"worker {runtime.worker_id}: stopped after {n} job(s)", err=True)
