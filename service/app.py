"""The FastAPI app factory.

``create_app(settings)`` builds the app without touching disk or loading models; its lifespan then
creates the data directory and tables, and loads the model pool. Tests pass their own ``Settings``
(and optionally a ``ModelPool`` with stub loaders); ``get_settings`` is overridden accordingly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

from service.audit import AuditMiddleware
from service.config import Settings, get_settings
from service.db import create_tables, make_engine, make_sessionmaker
from service.errors import PROBLEM_MEDIA_TYPE, install_error_handlers
from service.jsonlimits import JsonDepthMiddleware
from service.observability import Metrics, RequestContextMiddleware, configure_logging
from service.pool import ModelPool
from service.routes import health, v1_routers
from service.storage import Storage

API_VERSION = "1.0.0"
DESCRIPTION = """\
Med-SegLens: segment brain-tumour MRI (BraTS labels 0 background, 1 NCR, 2 SNFH, 3 ET), inspect the
sparse-autoencoder latents of the models, diff them across cohorts and architectures, and edit them
to repair failures.

Authenticate with an API key (`Authorization: Bearer msl_...` or `X-API-Key: msl_...`); each route
names the scope it needs (read, segment, intervene, train, admin; admin implies all). Errors are
RFC 9457 `application/problem+json` documents whose `type` is stable per condition.
"""


def operation_id(route: APIRoute) -> str:
    """The operationId of a route: its function name (``create_volume``, ``list_volumes``...)."""
    return route.name


def _route_templates(mounted: list[tuple[str, APIRouter]]) -> dict[int, str]:
    """``id(route)`` -> full path template, for metrics and logs; refuses duplicate operationIds.

    FastAPI keeps included routers nested, and ``scope["route"]`` is the route object inside its
    router, whose path lacks the mount prefix; this table restores it.
    """
    templates: dict[int, str] = {}
    names: set[str] = set()
    for prefix, router in mounted:
        for route in router.routes:
            if isinstance(route, APIRoute):
                if route.name in names:
                    raise RuntimeError(f"Two routes are named {route.name!r}; operationIds must be unique.")
                names.add(route.name)
                templates[id(route)] = prefix + route.path_format
    return templates


def _problem_only(schema: dict[str, Any]) -> dict[str, Any]:
    # Error responses are problem+json only; FastAPI also lists the route's own media type for them.
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            for response in operation.get("responses", {}).values():
                content = response.get("content", {})
                if PROBLEM_MEDIA_TYPE in content:
                    response["content"] = {PROBLEM_MEDIA_TYPE: content[PROBLEM_MEDIA_TYPE]}
    return schema


def create_app(settings: Settings | None = None, *, pool: ModelPool | None = None) -> FastAPI:
    """Build the service. ``pool`` replaces the zoo-loaded model pool (tests, embedding)."""
    settings = settings or get_settings()
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        configure_logging(settings.log_level)
        storage = Storage(settings.data_dir)
        storage.ensure()
        engine = make_engine(settings.database_url)
        await anyio.to_thread.run_sync(create_tables, engine)
        resident = pool or ModelPool(
            settings.zoo_dir,
            device=settings.device,
            precision=settings.precision,
            concurrency=settings.inference_concurrency,
            prefix_cache_bytes=settings.prefix_cache_bytes,
            metrics=metrics,
        )
        if resident.metrics is None:
            resident.metrics = metrics
        await anyio.to_thread.run_sync(resident.load)
        app.state.storage = storage
        app.state.engine = engine
        app.state.sessionmaker = make_sessionmaker(engine)
        app.state.pool = resident
        try:
            yield
        finally:
            if pool is None:
                resident.close()
            engine.dispose()

    app = FastAPI(
        title="Med-SegLens",
        version=API_VERSION,
        description=DESCRIPTION,
        lifespan=lifespan,
        generate_unique_id_function=operation_id,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.dependency_overrides[get_settings] = lambda: settings
    install_error_handlers(app)

    mounted = [("", health.router), *(("/v1", router) for router in v1_routers())]
    app.add_middleware(JsonDepthMiddleware)  # innermost: a JSON bomb is refused before FastAPI parses it
    app.add_middleware(AuditMiddleware)  # inside the request-id middleware: rows carry the request id
    app.add_middleware(RequestContextMiddleware, metrics=metrics, templates=_route_templates(mounted))
    for prefix, router in mounted:
        app.include_router(router, prefix=prefix)

    default_openapi = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _problem_only(default_openapi())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
