"""``/v1/keys``: an ``admin`` key manages the keys of its own project (list, create, revoke).

Keys of other projects are invisible (404), as every tenant row (``service.tenancy``). The
``superuser`` scope cannot be granted here (CLI only). A new key is shown once, in the answer.
"""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter
from pydantic import BaseModel, Field
from sqlalchemy import select

from service.auth import SCOPES, create_key, parse_duration
from service.deps import AdminKey, ServerId, SessionDep
from service.errors import ResourceNotFound, ServiceError, problem_responses, problem_statuses
from service.models_db import ApiKey, Project, utcnow

router = APIRouter(prefix="/keys", tags=["keys"])


class InvalidScope(ServiceError):
    status, slug, title = 422, "invalid-scope", "Invalid scope"


class KeyCreate(BaseModel):
    name: str = Field(default="key", min_length=1, max_length=100)
    scopes: list[str] = Field(min_length=1, description=f"From {', '.join(SCOPES)}.")
    expires: str | None = Field(default=None, pattern=r"^\d{1,6}[mhdw]$", description="e.g. 30d, 12h.")


class KeyOut(BaseModel):
    """A key's metadata (never the key, except ``key`` once in the create answer)."""

    id: str
    name: str
    prefix: str
    project: str
    scopes: list[str]
    created: datetime
    expires: datetime | None
    last_used: datetime | None
    revoked: datetime | None
    key: str | None = None

    @classmethod
    def of(cls, row: ApiKey, project: str, key: str | None = None) -> KeyOut:
        return cls(
            id=row.id,
            name=row.name,
            prefix=row.prefix,
            project=project,
            scopes=list(row.scopes),
            created=row.created,
            expires=row.expires,
            last_used=row.last_used,
            revoked=row.revoked,
            key=key,
        )


class KeyList(BaseModel):
    items: list[KeyOut]


@router.get("", response_model=KeyList, responses=problem_responses(*problem_statuses()))
def list_project_keys(key: AdminKey, session: SessionDep) -> KeyList:
    """The keys of the caller's project, oldest first (revoked ones included)."""
    rows = session.execute(
        select(ApiKey, Project.name)
        .outerjoin(Project, Project.id == ApiKey.project_id)
        .order_by(ApiKey.created, ApiKey.id)
    ).all()
    return KeyList(items=[KeyOut.of(r, name or "?") for r, name in rows])


@router.post(
    "", status_code=201, response_model=KeyOut, responses=problem_responses(*problem_statuses([400, 422]))
)
def create_project_key(key: AdminKey, body: KeyCreate, session: SessionDep) -> KeyOut:
    """A new key of the caller's project; the answer's ``key`` is shown only this once."""
    unknown = sorted(set(body.scopes) - set(SCOPES))
    if unknown:
        raise InvalidScope(f"Unknown scope(s) {', '.join(unknown)}; choose from {', '.join(SCOPES)}.")
    expires = utcnow() + parse_duration(body.expires) if body.expires else None
    row, plain = create_key(session, body.name, body.scopes, project=key.project, expires=expires)
    session.commit()
    return KeyOut.of(row, key.project, plain)


@router.delete("/{key_id}", response_model=KeyOut, responses=problem_responses(*problem_statuses([404])))
def revoke_project_key(key: AdminKey, key_id: ServerId, session: SessionDep) -> KeyOut:
    """Revoke a key of the caller's project: requests with it get 401 from the next one on."""
    row = session.get(ApiKey, key_id)
    if row is None:
        raise ResourceNotFound(f"No key {key_id} in this project; list keys with GET /v1/keys.")
    if row.revoked is None:
        row.revoked = utcnow()
        session.commit()
    return KeyOut.of(row, key.project)
