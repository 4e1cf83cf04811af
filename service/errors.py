"""RFC 9457 problem+json for every error the service returns; the one place statuses are chosen.

- Core errors (``medseglens_core.errors``) map by class: the slug is the class name in kebab case
  (``TruncatedNifti`` -> ``.../problems/truncated-nifti``) and the status comes from the nearest
  base in ``CORE_STATUS`` (``TooLarge`` 413, ``NotFound`` 404, ``InvalidInput`` 422, the base 400),
  unless ``CORE_STATUS_BY_NAME`` names the class itself (unreadable files are 400).
- Service errors (:class:`ServiceError` subclasses) carry their own status and slug.
- ``RequestValidationError`` -> 422 ``validation-error`` with per-field ``errors``.
- Starlette/FastAPI ``HTTPException`` -> its status (404 for unknown routes, 405, ...).
- Anything else -> 500 ``internal-error`` with a fixed detail: internals never leak.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from medseglens_core.errors import InvalidInput, MedSegLensError, NotFound, TooLarge
from service.schemas.common import Problem

log = logging.getLogger("medseglens.service")

PROBLEM_BASE = "https://medseglens.dev/problems/"
PROBLEM_MEDIA_TYPE = "application/problem+json"

# Nearest base class wins (checked along the MRO).
CORE_STATUS: dict[type[MedSegLensError], int] = {
    TooLarge: 413,
    NotFound: 404,
    InvalidInput: 422,
    MedSegLensError: 400,
}
# Core classes whose input could not even be parsed: a malformed request (400), not a bad value.
# (medseglens_core.io.errors); everything else InvalidInput is 422.
CORE_STATUS_BY_NAME: dict[str, int] = {
    "CorruptGzip": 400,
    "TruncatedGzip": 400,
    "NotNifti": 400,
    "TruncatedNifti": 400,
}

_TITLES = {
    400: "Bad request",
    401: "Missing or invalid API key",
    403: "Insufficient scope",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    500: "Internal server error",
    503: "Service unavailable",
}


class ServiceError(Exception):
    """An error the service raises itself; subclasses fix status, slug and title."""

    status: int = 400
    slug: str = "bad-request"
    title: str = "Bad request"

    def __init__(self, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


class Unauthorized(ServiceError):
    status, slug, title = 401, "unauthorized", "Missing or invalid API key"


class Forbidden(ServiceError):
    status, slug, title = 403, "forbidden", "Insufficient scope"


class ResourceNotFound(ServiceError):
    status, slug, title = 404, "not-found", "Not found"


class Conflict(ServiceError):
    status, slug, title = 409, "conflict", "Conflict"


class PayloadTooLarge(ServiceError):
    status, slug, title = 413, "payload-too-large", "Payload too large"


class UnsupportedMediaType(ServiceError):
    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"


class InvalidUpload(ServiceError):
    status, slug, title = 422, "invalid-upload", "Invalid upload"


# Largest list offset accepted (422 above it): far beyond any real table, far below SQL's int64.
MAX_OFFSET = 10**9


class ArtefactGone(ServiceError):
    """A stored row whose file is missing on disk (deleted or lost): the result must be made again."""

    status, slug, title = 410, "artefact-gone", "Artefact gone"


def stored_artefact(path: Path, what: str, redo: str) -> Path:
    """``path`` when it is a file, else :class:`ArtefactGone` naming ``what`` and how to ``redo`` it."""
    if not path.is_file():
        raise ArtefactGone(f"The {what} is missing on the server (deleted or lost); {redo}.")
    return path


class ServiceUnavailable(ServiceError):
    status, slug, title = 503, "service-unavailable", "Service unavailable"


class ZooEntryUnavailable(ServiceError):
    """A model or SAE present in the zoo whose files are broken (unreadable weights, wrong sha256)."""

    status, slug, title = 503, "zoo-entry-unavailable", "Zoo entry unavailable"


def _kebab(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "-", name).lower()


def core_error_status(exc: MedSegLensError) -> int:
    """The HTTP status of a core error: by class name override, else by its nearest mapped base."""
    for cls in type(exc).__mro__:
        if cls.__name__ in CORE_STATUS_BY_NAME:
            return CORE_STATUS_BY_NAME[cls.__name__]
        if cls in CORE_STATUS:
            return CORE_STATUS[cls]
    return 400  # pragma: no cover - MedSegLensError is always in the MRO


def problem_response(
    request: Request,
    *,
    status: int,
    slug: str,
    title: str,
    detail: str,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    """Build an ``application/problem+json`` response for ``request``."""
    core = {
        "type": PROBLEM_BASE + slug,
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        "request_id": getattr(request.state, "request_id", None),
    }
    try:
        content = jsonable_encoder(Problem(**core, **extra), exclude_none=True)
    except (ValueError, TypeError, RecursionError):
        # The extras describe the bad input and would not render (e.g. nested past the
        # serializer's depth): answer with the problem itself rather than a 500.
        content = jsonable_encoder(Problem(**core), exclude_none=True)
    return JSONResponse(content, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, ServiceError):  # pragma: no cover - registered for ServiceError only
        raise exc
    return problem_response(
        request,
        status=exc.status,
        slug=exc.slug,
        title=exc.title,
        detail=exc.detail,
        headers=exc.headers,
        **exc.extra,
    )


async def _core_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, MedSegLensError):  # pragma: no cover
        raise exc
    status = core_error_status(exc)
    return problem_response(
        request,
        status=status,
        slug=_kebab(type(exc).__name__),
        title=_TITLES.get(status, "Error"),
        detail=str(exc) or type(exc).__name__,
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, RequestValidationError):  # pragma: no cover
        raise exc
    errors = [
        {
            "loc": [str(p) for p in e.get("loc", ())],
            "msg": str(e.get("msg", "")),
            "type": str(e.get("type", "")),
        }
        for e in exc.errors()
    ]
    fields = ", ".join(".".join(e["loc"]) for e in errors) or "request"
    return problem_response(
        request,
        status=422,
        slug="validation-error",
        title="Request validation failed",
        detail=f"Invalid value in: {fields}. See 'errors' for each field.",
        errors=errors,
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, StarletteHTTPException):  # pragma: no cover
        raise exc
    status = exc.status_code
    title = _TITLES.get(status, "Error")
    detail = exc.detail if isinstance(exc.detail, str) else title
    if status == 404 and detail == "Not Found":
        detail = f"No route or resource at {request.url.path}; see /docs for the API."
    return problem_response(
        request,
        status=status,
        slug="not-found" if status == 404 else title.lower().replace(" ", "-"),
        title=title,
        detail=detail,
        headers=getattr(exc, "headers", None),
    )


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    return internal_error_response(request, exc)


def internal_error_response(request: Request, exc: BaseException) -> JSONResponse:
    """A problem+json 500; the traceback goes to the log under the request id, never to the client."""
    # Last resort: log the traceback under the request id, return nothing of it to the client.
    log.error(
        "unhandled error",
        exc_info=(type(exc), exc, exc.__traceback__),
        extra={"error_class": type(exc).__name__},
    )
    return problem_response(
        request,
        status=500,
        slug="internal-error",
        title="Internal server error",
        detail="The server failed on this request; report the request_id to the operators.",
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register every handler on ``app``; call once from the app factory."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(MedSegLensError, _core_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)


_RESPONSE_DOCS = {
    400: "Malformed request or unreadable file (`bad-request`, `corrupt-gzip`, `truncated-gzip`, `not-nifti`, "
    "`truncated-nifti`).",
    401: "Missing or invalid API key (`unauthorized`).",
    403: "The API key lacks the scope this route needs (`forbidden`).",
    404: "Unknown id (`not-found`).",
    409: "Conflicts with the current state (`conflict`).",
    410: "A stored artefact of this row is missing on disk (`artefact-gone`): make the result again.",
    413: "Upload over the byte limit or volume over the voxel limit (`payload-too-large`, `file-too-large`, "
    "`too-many-voxels`).",
    415: "Wrong request media type (`unsupported-media-type`).",
    422: "Invalid value (`validation-error`, `invalid-upload`, `json-too-deep`: JSON nested deeper than 32 "
    "levels, and the core's `invalid-input` kinds: "
    "`non-finite-voxels`, `modality-shape-mismatch`, `affine-mismatch`, `invalid-label-values`, ...).",
    503: "A dependency is down or not ready (`service-unavailable`), or the requested model/SAE is in the "
    "zoo but its files are broken (`zoo-entry-unavailable`, naming it in `entry`).",
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the given statuses, each a problem+json document."""
    return {
        status: {
            "model": Problem,
            "description": _RESPONSE_DOCS[status],
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }


def problem_statuses(extra: Iterable[int] = ()) -> tuple[int, ...]:
    """Statuses every authenticated route can return (401, 403, 422) plus ``extra``."""
    return tuple(sorted({401, 403, 422, *extra}))
