"""Liveness, readiness and Prometheus metrics (no API key: probes and scrapers call these)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from service.db import ping
from service.deps import MetricsDep, PoolDep, SettingsDep
from service.errors import ServiceUnavailable, problem_responses
from service.storage_check import CachedScan

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    checks: dict[str, Any] = Field(
        description="database (bool), models ({ready, models, saes, errors, unavailable}), queue (bool, "
        "with Redis), storage ({dangling, by_kind, checked, truncated}: rows whose files are missing; "
        "reported, never a reason for 503)."
    )


def redis_ping(url: str) -> bool:
    """True when Redis at ``url`` answers PING within half a second."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up (it answers); says nothing about its dependencies."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses=problem_responses(503))
def readyz(request: Request, settings: SettingsDep, pool: PoolDep) -> Readiness:
    """Ready to serve: models resident, database reachable, queue reachable when one is configured.

    Also reports zoo entries that failed to load (``models.unavailable``) and database rows whose
    files are missing on disk (``storage``, scanned at most every 30 s); neither makes it not ready
    while one model serves. ``medseglens storage check`` lists the dangling rows.
    """
    checks: dict[str, Any] = {
        "database": ping(request.app.state.engine),
        "models": {"ready": pool.ready, "models": len(pool.models), "saes": len(pool.saes)},
    }
    if pool.unavailable:
        checks["models"]["errors"] = sorted(pool.load_errors)
        checks["models"]["unavailable"] = dict(sorted(pool.load_errors.items()))
    ok = checks["database"] and pool.ready
    if settings.redis_url:
        checks["queue"] = redis_ping(settings.redis_url)
        ok = ok and checks["queue"]
    if checks["database"]:
        checks["storage"] = _storage_scan(request).summary(
            request.app.state.sessionmaker, request.app.state.storage, settings.zoo_dir
        )
    if not ok:
        failing = [k for k in ("database", "models", "queue") if k in checks and not _passed(checks[k])]
        raise ServiceUnavailable(f"Not ready: {', '.join(failing)}.", checks=checks)
    return Readiness(status="ready", checks=checks)


def _passed(check: Any) -> bool:
    return bool(check.get("ready")) if isinstance(check, dict) else bool(check)


def _storage_scan(request: Request) -> CachedScan:
    """The app's cached storage scan (made on the first probe)."""
    scan = getattr(request.app.state, "storage_scan", None)
    if scan is None:
        scan = request.app.state.storage_scan = CachedScan()
    return scan


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text."}
    },
)
def metrics(request: Request, metrics: MetricsDep, pool: PoolDep) -> Response:
    """Prometheus metrics: request latency by route, inference seconds, resident models, queue depth."""
    metrics.models_loaded.labels("model").set(len(pool.models))
    metrics.models_loaded.labels("sae").set(len(pool.saes))
    jobs = getattr(request.app.state, "jobs", None)
    if jobs is not None:
        import redis

        queue = jobs.settings.queue
        try:
            metrics.queue_depth.labels(queue).set(jobs.dispatcher.depth(queue))
        except (redis.RedisError, OSError):
            metrics.queue_depth.labels(queue).set(float("nan"))  # queue unreachable: unknown, not 0
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
