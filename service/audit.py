"""The audit log: one append-only row per state-changing request, mask/SEG download and job transition.

:class:`AuditMiddleware` (pure ASGI, inside the request-id middleware) writes a row after every
POST/PUT/PATCH/DELETE under ``/v1`` and every GET of a mask or a DICOM SEG, whatever its outcome:
``{time, key_id, project, action, resource, resource_id, request_id, outcome}``. ``key_id`` is the
key's id (never the key), ``action`` the route's operationId (``create_volume``, ``delete_volume``...),
``resource`` the first path segment after ``/v1``, ``resource_id`` the id in the path or, for a
create, the ``id`` of the JSON answer; ``outcome`` the HTTP status. Nothing of a request's body or
headers is kept. Job state changes are logged by the job store (:func:`record_job`).

Rows are never updated or deleted: database triggers refuse it (``service.migrations``).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import anyio.to_thread
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.models_db import DEFAULT_PROJECT, AuditEvent, Project, utcnow

log = logging.getLogger("medseglens.audit")

WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# GETs that hand out patient-derived label data: logged too.
_DOWNLOAD_RE = re.compile(r"/(mask|seg\.dcm)$")
_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_MAX_BODY = 1 << 20


def event_dict(row: AuditEvent) -> dict[str, Any]:
    """The public form of an audit row."""
    return {
        "id": row.id,
        "time": row.time.isoformat(),
        "key_id": row.key_id,
        "project": row.project,
        "action": row.action,
        "resource": row.resource,
        "resource_id": row.resource_id,
        "request_id": row.request_id,
        "outcome": row.outcome,
    }


def parse_when(text: str) -> datetime:
    """An ISO 8601 time (naive = UTC) or a duration back from now (``7d``, ``12h``)."""
    from service.auth import parse_duration

    try:
        return utcnow() - parse_duration(text)
    except ValueError:
        pass
    try:
        t = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"Invalid time {text!r}; write ISO 8601 (2026-01-31T12:00:00Z) or a duration (7d)."
        ) from None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


def iter_events(
    session: Session,
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    project: str | None = None,
    resource: str | None = None,
) -> Iterator[dict[str, Any]]:
    """Audit rows oldest first, filtered; streamed in batches."""
    conds = []
    if since is not None:
        conds.append(AuditEvent.time >= since)
    if until is not None:
        conds.append(AuditEvent.time <= until)
    if project is not None:
        conds.append(AuditEvent.project == project)
    if resource is not None:
        conds.append(AuditEvent.resource == resource)
    last = 0
    while True:
        rows = session.scalars(
            select(AuditEvent).where(AuditEvent.id > last, *conds).order_by(AuditEvent.id).limit(1000)
        ).all()
        if not rows:
            return
        for row in rows:
            yield event_dict(row)
        last = rows[-1].id


def write(factory: Any, **fields: Any) -> None:
    """Insert one audit row in its own transaction; a failure is logged, never raised."""
    try:
        with factory() as session:
            session.add(AuditEvent(time=utcnow(), **fields))
            session.commit()
    except Exception:  # noqa: BLE001 - the audit must not turn a served request into an error
        log.exception("audit row not written", extra={"action": fields.get("action")})


def record_job(session: Session, job_id: str, state: str) -> None:
    """Add, in ``session``'s transaction, the audit row of job ``job_id`` entering ``state``."""
    from service.models_db import Job

    name = session.execute(
        select(Project.name).join(Job, Job.project_id == Project.id).where(Job.id == job_id)
    ).scalar()
    session.add(
        AuditEvent(
            time=utcnow(),
            key_id=None,
            project=name or DEFAULT_PROJECT,
            action=f"job_{state}",
            resource="jobs",
            resource_id=job_id,
            request_id=None,
            outcome=state,
        )
    )


def _resource(path: str) -> tuple[str, str | None]:
    parts = [p for p in path.split("/") if p]
    if parts and parts[0] == "v1":
        parts = parts[1:]
    ident = next((p for p in parts if _ID_RE.match(p)), None)
    return (parts[0] if parts else "-"), ident


def _audited(method: str, path: str) -> bool:
    if not path.startswith("/v1/"):
        return False
    return method in WRITE_METHODS or (method == "GET" and _DOWNLOAD_RE.search(path) is not None)


class AuditMiddleware:
    """Pure ASGI middleware writing the audit row of every audited request after its answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _audited(scope["method"], scope["path"]):
            await self.app(scope, receive, send)
            return
        status = 500
        body = bytearray()
        is_json = False

        async def send_tracking(message: Message) -> None:
            nonlocal status, is_json
            if message["type"] == "http.response.start":
                status = message["status"]
                ctype = dict(message.get("headers") or []).get(b"content-type", b"")
                is_json = ctype.startswith(b"application/json")
            elif message["type"] == "http.response.body" and is_json and len(body) < _MAX_BODY:
                body.extend(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_tracking)
        finally:
            resource, ident = _resource(scope["path"])
            if ident is None and is_json and 200 <= status < 300 and body:
                try:
                    answer = json.loads(bytes(body))
                    ident = str(answer.get("id")) if isinstance(answer, dict) and answer.get("id") else None
                except ValueError:
                    ident = None
            state = scope.get("state") or {}
            route = scope.get("route")
            factory = getattr(scope["app"].state, "sessionmaker", None)
            if factory is not None:
                fields = {
                    "key_id": state.get("key_id"),
                    "project": state.get("project"),
                    "action": getattr(route, "name", None) or f"{scope['method']} unmatched",
                    "resource": resource[:64],
                    "resource_id": ident[:128] if ident else None,
                    "request_id": state.get("request_id"),
                    "outcome": str(status),
                }
                await anyio.to_thread.run_sync(lambda: write(factory, **fields))
