"""API keys with scopes.

A key is ``msl_`` + 43 url-safe random characters, shown once when made; the database keeps only its
sha256 and its first 12 characters (``prefix``) so a person can tell keys apart. Clients send it as
``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. The ``admin`` scope implies every other.

Every key belongs to a project (``service.tenancy``): what it reads, lists, changes and makes is
that project's. ``superuser`` (granted by the CLI only) implies every scope and sees every project.
A key may expire (``expires``); ``last_used`` is kept to the minute.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated

import anyio.to_thread
from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service import tenancy
from service.db import get_session
from service.errors import Forbidden, ResourceNotFound, Unauthorized
from service.models_db import DEFAULT_PROJECT, ApiKey, Project, utcnow
from service.storage import new_id

SCOPES = ("read", "segment", "intervene", "train", "admin")
SUPERUSER = "superuser"
KEY_PREFIX = "msl_"
# last_used is written at most once per this interval per key (a write per request would serialise
# every request on SQLite).
LAST_USED_RESOLUTION = timedelta(seconds=60)
PROJECT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")

bearer_scheme = HTTPBearer(
    auto_error=False, scheme_name="bearer", description="`Authorization: Bearer msl_...`"
)
api_key_scheme = APIKeyHeader(
    name="X-API-Key", auto_error=False, scheme_name="apiKey", description="`X-API-Key: msl_...`"
)


@dataclass(frozen=True)
class Principal:
    """The caller, as identified by its API key."""

    key_id: str
    name: str
    scopes: frozenset[str]
    project_id: str = "0" * 32
    project: str = DEFAULT_PROJECT

    @property
    def superuser(self) -> bool:
        return SUPERUSER in self.scopes

    def allows(self, scope: str) -> bool:
        """True when the key carries ``scope``, ``admin`` or ``superuser``."""
        return scope in self.scopes or "admin" in self.scopes or self.superuser

    @property
    def tenant(self) -> tenancy.Tenant:
        return tenancy.Tenant(self.project_id, self.project, everything=self.superuser)


def hash_key(key: str) -> str:
    """The sha256 hex digest stored for ``key``."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_scopes(scopes: str | Iterable[str]) -> list[str]:
    """Scopes from ``"read,segment"`` or an iterable; refuses unknown names, keeps ``SCOPES`` order."""
    items = [s.strip() for s in (scopes.split(",") if isinstance(scopes, str) else scopes) if s.strip()]
    known = (*SCOPES, SUPERUSER)
    unknown = sorted(set(items) - set(known))
    if unknown:
        raise ValueError(f"Unknown scope(s) {', '.join(unknown)}; choose from {', '.join(known)}.")
    if not items:
        raise ValueError(f"Give at least one scope from {', '.join(SCOPES)}.")
    return [s for s in known if s in items]


_DURATION_RE = re.compile(r"^\s*(\d{1,6})\s*([mhdw])\s*$")
_UNIT = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_duration(text: str) -> timedelta:
    """``"30d"``, ``"12h"``, ``"90m"``, ``"2w"`` as a timedelta (> 0); ValueError otherwise."""
    m = _DURATION_RE.match(text)
    if m is None or int(m.group(1)) == 0:
        raise ValueError(f"Invalid duration {text!r}; write a positive number and m, h, d or w (e.g. 30d).")
    return timedelta(**{_UNIT[m.group(2)]: int(m.group(1))})


def create_project(session: Session, name: str) -> Project:
    """Make a project; ValueError when the name is invalid or taken."""
    if not PROJECT_NAME_RE.match(name):
        raise ValueError(f"Invalid project name {name!r}; use letters, digits, '_', '.', '-' (max 100).")
    if session.scalar(select(Project).where(Project.name == name)) is not None:
        raise ValueError(f"Project {name!r} exists already; see `medseglens projects list`.")
    row = Project(id=new_id(), name=name)
    session.add(row)
    session.flush()
    return row


def delete_project(session: Session, name: str) -> Project:
    """Mark a project deleted (its row stays, so audit rows naming it stay unambiguous): its keys get
    401 from the next request on. The default project cannot be deleted."""
    row = project_by_name(session, name)
    if row.name == DEFAULT_PROJECT:
        raise ValueError("The default project cannot be deleted.")
    row.deleted = utcnow()
    return row


def list_projects(session: Session) -> list[Project]:
    """Every project, oldest first (deleted ones included)."""
    return list(session.scalars(select(Project).order_by(Project.created, Project.id)))


def project_by_name(session: Session, name: str) -> Project:
    """The live project ``name``; :class:`ResourceNotFound` when unknown or deleted."""
    row = session.scalar(select(Project).where(Project.name == name))
    if row is None or row.deleted is not None:
        raise ResourceNotFound(f"No project {name!r}; create it with `medseglens projects create {name}`.")
    return row


def create_key(
    session: Session,
    name: str,
    scopes: str | Iterable[str],
    *,
    project: str | None = None,
    expires: datetime | None = None,
) -> tuple[ApiKey, str]:
    """Make and store a key of ``project`` (default: ``default``); returns the row and the plain key."""
    pid = project_by_name(session, project or DEFAULT_PROJECT).id
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        id=new_id(),
        name=name,
        prefix=plain[:12],
        key_hash=hash_key(plain),
        scopes=parse_scopes(scopes),
        project_id=pid,
        expires=expires,
    )
    session.add(row)
    session.flush()
    return row, plain


def list_keys(session: Session) -> list[ApiKey]:
    """Every key, oldest first (revoked ones included)."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created, ApiKey.id)))


def revoke_key(session: Session, key_id: str) -> bool:
    """Mark a key revoked; False when no such key exists."""
    row = session.get(ApiKey, key_id)
    if row is None:
        return False
    if row.revoked is None:
        row.revoked = utcnow()
    return True


def authenticate(session: Session, key: str | None) -> Principal:
    """The principal behind ``key``; 401 when missing, unknown or revoked."""
    if not key:
        raise Unauthorized(
            "No API key; send 'Authorization: Bearer msl_...' or 'X-API-Key: msl_...'.",
            headers={"WWW-Authenticate": "Bearer"},
        )
    if not key.startswith(KEY_PREFIX):
        raise Unauthorized("API key not recognised.", headers={"WWW-Authenticate": "Bearer"})
    found = session.execute(
        select(ApiKey, Project.name, Project.deleted)
        .outerjoin(Project, Project.id == ApiKey.project_id)
        .where(ApiKey.key_hash == hash_key(key))
    ).first()
    if found is None or found[0].revoked is not None:
        raise Unauthorized("API key not recognised or revoked.", headers={"WWW-Authenticate": "Bearer"})
    row, project, deleted = found
    now = utcnow()
    if row.expires is not None and row.expires <= now:
        raise Unauthorized("API key expired; create a new one.", headers={"WWW-Authenticate": "Bearer"})
    if project is None or deleted is not None:
        raise Unauthorized("The API key's project was deleted.", headers={"WWW-Authenticate": "Bearer"})
    if row.last_used is None or now - row.last_used >= LAST_USED_RESOLUTION:
        session.execute(update(ApiKey).where(ApiKey.id == row.id).values(last_used=now))
        session.commit()
    return Principal(
        key_id=row.id, name=row.name, scopes=frozenset(row.scopes), project_id=row.project_id, project=project
    )


def require_scope(scope: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency that authenticates the caller, checks ``scope`` (403 when missing) and scopes the
    rest of the request to the key's project (``service.tenancy``).

    It is async on purpose: a context variable set here stays set for the rest of the request (a
    sync dependency runs in a worker thread, whose context is thrown away).
    """
    if scope not in SCOPES:
        raise ValueError(f"Unknown scope {scope!r}; choose from {', '.join(SCOPES)}.")

    async def dependency(
        request: Request,
        session: Annotated[Session, Depends(get_session)],
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)] = None,
        x_api_key: Annotated[str | None, Security(api_key_scheme)] = None,
    ) -> Principal:
        key = bearer.credentials if bearer is not None else x_api_key
        principal = await anyio.to_thread.run_sync(authenticate, session, key)
        request.state.key_id = principal.key_id
        request.state.project = principal.project
        if not principal.allows(scope):
            raise Forbidden(f"This API key lacks the '{scope}' scope; create a key with it.")
        tenancy.enter(principal.tenant, session)
        return principal

    dependency.__name__ = f"require_{scope}"
    return dependency
