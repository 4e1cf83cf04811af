"""Structured JSON logs with a request id, and Prometheus metrics.

Each request gets an id (a valid incoming ``X-Request-ID`` is kept, else a fresh one), returned in
the ``X-Request-ID`` response header and attached to every log record made while serving it.
Access logs name the route *template* (``/v1/volumes/{volume_id}``), never query strings, file
names or NIfTI header fields.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import uuid
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
access_log = logging.getLogger("medseglens.access")

_STD_ATTRS = set(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request_id and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        rid = request_id_var.get()
        if rid:
            out["request_id"] = rid
        for key, value in vars(record).items():
            if key not in _STD_ATTRS and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str) -> None:
    """Send ``medseglens.*`` and uvicorn's error log through the JSON formatter at ``level``."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    for name in ("medseglens", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(level)
        logger.propagate = False


class Metrics:
    """The service's Prometheus metrics, in a registry of their own (one per app instance)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request_seconds = Histogram(
            "medseglens_http_request_duration_seconds",
            "HTTP request latency by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.inference_seconds = Histogram(
            "medseglens_inference_seconds",
            "Seconds of blocking model work, by kind of work and device.",
            ["kind", "device"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
            registry=self.registry,
        )
        self.models_loaded = Gauge(
            "medseglens_models_loaded",
            "Models and SAEs resident in the pool.",
            ["kind"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "medseglens_queue_depth", "Jobs waiting in the queue.", ["queue"], registry=self.registry
        )
        self.uploads_bytes = Counter(
            "medseglens_upload_bytes", "Bytes of accepted volume uploads.", registry=self.registry
        )


class RequestContextMiddleware:
    """Pure ASGI middleware: request id in and out, latency histogram, one access log line."""

    def __init__(self, app: ASGIApp, metrics: Metrics, templates: dict[int, str] | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.templates = templates or {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if _REQUEST_ID_RE.fullmatch(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        token = request_id_var.set(rid)
        status = 500
        start = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                headers.append((b"x-request-id", rid.encode("latin-1")))
                message["headers"] = headers
            await send(message)

        started = False

        async def send_tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send_with_id(message)

        try:
            await self.app(scope, receive, send_tracking)
        except Exception as exc:  # noqa: BLE001 - last resort: a problem+json 500 that leaks nothing
            if started:
                raise
            from starlette.requests import Request

            from service.errors import internal_error_response

            response = internal_error_response(Request(scope), exc)
            await response(scope, receive, send_with_id)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            template = self.templates.get(id(route)) or getattr(route, "path_format", None) or "unmatched"
            self.metrics.request_seconds.labels(scope["method"], template, str(status)).observe(elapsed)
            access_log.info(
                "request",
                extra={
                    "method": scope["method"],
                    "route": template,
                    "status": status,
                    "duration_ms": round(elapsed * 1000, 2),
                },
            )
            request_id_var.reset(token)
