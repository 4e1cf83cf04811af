"""``/v1/audit``: the caller's project's audit log (admin scope), newest first, paginated."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import BaseModel
from sqlalchemy import func, select

from service.audit import event_dict
from service.deps import AdminKey, SessionDep
from service.errors import MAX_OFFSET, ServiceError, problem_responses, problem_statuses
from service.models_db import AuditEvent

router = APIRouter(prefix="/audit", tags=["audit"])


class InvalidTimeRange(ServiceError):
    status, slug, title = 422, "invalid-time-range", "Invalid time range"


class AuditEventOut(BaseModel):
    """One audit row: who (key id, never the key), in which project, did what, with what outcome."""

    id: int
    time: datetime
    key_id: str | None
    project: str | None
    action: str
    resource: str
    resource_id: str | None
    request_id: str | None
    outcome: str


class AuditPage(BaseModel):
    """One page of audit rows, newest first."""

    items: list[AuditEventOut]
    total: int
    limit: int
    offset: int


def _utc(t: datetime | None) -> datetime | None:
    if t is None:
        return None
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


@router.get("", response_model=AuditPage, responses=problem_responses(*problem_statuses([422])))
def list_audit_events(
    key: AdminKey,
    session: SessionDep,
    resource: Annotated[
        str | None, Query(max_length=64, description="volumes, segmentations, jobs...")
    ] = None,
    since: Annotated[datetime | None, Query(description="Rows at or after this time (ISO 8601).")] = None,
    until: Annotated[datetime | None, Query(description="Rows at or before this time (ISO 8601).")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> AuditPage:
    """The audit rows of the key's project (a superuser key: every project), newest first."""
    lo, hi = _utc(since), _utc(until)
    if lo is not None and hi is not None and lo > hi:
        raise InvalidTimeRange(f"since ({lo.isoformat()}) is after until ({hi.isoformat()}).")
    conds = []
    if not key.superuser:
        conds.append(AuditEvent.project == key.project)
    if resource is not None:
        conds.append(AuditEvent.resource == resource)
    if lo is not None:
        conds.append(AuditEvent.time >= lo)
    if hi is not None:
        conds.append(AuditEvent.time <= hi)
    total = session.scalar(select(func.count()).select_from(AuditEvent).where(*conds)) or 0
    rows = session.scalars(
        select(AuditEvent).where(*conds).order_by(AuditEvent.id.desc()).limit(limit).offset(offset)
    ).all()
    return AuditPage(
        items=[AuditEventOut(**event_dict(r)) for r in rows], total=int(total), limit=limit, offset=offset
    )
