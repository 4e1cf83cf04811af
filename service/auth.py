"""API keys with scopes.

A key is ``msl_`` + 43 url-safe random characters, shown once when made; the database keeps only its
sha256 and its first 12 characters (``prefix``) so a person can tell keys apart. Clients send it as
``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. The ``admin`` scope implies every other.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db import get_session
from service.errors import Forbidden, Unauthorized
from service.models_db import ApiKey, utcnow
from service.storage import new_id

SCOPES = ("read", "segment", "intervene", "train", "admin")
KEY_PREFIX = "msl_"

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

    def allows(self, scope: str) -> bool:
        """True when the key carries ``scope`` or ``admin``."""
        return scope in self.scopes or "admin" in self.scopes


def hash_key(key: str) -> str:
    """The sha256 hex digest stored for ``key``."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def parse_scopes(scopes: str | Iterable[str]) -> list[str]:
    """Scopes from ``"read,segment"`` or an iterable; refuses unknown names, keeps ``SCOPES`` order."""
    items = [s.strip() for s in (scopes.split(",") if isinstance(scopes, str) else scopes) if s.strip()]
    unknown = sorted(set(items) - set(SCOPES))
    if unknown:
        raise ValueError(f"Unknown scope(s) {', '.join(unknown)}; choose from {', '.join(SCOPES)}.")
    if not items:
        raise ValueError(f"Give at least one scope from {', '.join(SCOPES)}.")
    return [s for s in SCOPES if s in items]


def create_key(session: Session, name: str, scopes: str | Iterable[str]) -> tuple[ApiKey, str]:
    """Make and store a key; returns the row and the plain key (shown once, never stored)."""
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(
        id=new_id(), name=name, prefix=plain[:12], key_hash=hash_key(plain), scopes=parse_scopes(scopes)
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
    row = session.scalar(select(ApiKey).where(ApiKey.key_hash == hash_key(key)))
    if row is None or row.revoked is not None:
        raise Unauthorized("API key not recognised or revoked.", headers={"WWW-Authenticate": "Bearer"})
    return Principal(key_id=row.id, name=row.name, scopes=frozenset(row.scopes))


def require_scope(scope: str) -> Callable[..., Principal]:
    """A dependency that authenticates the caller and checks ``scope`` (403 when missing)."""
    if scope not in SCOPES:
        raise ValueError(f"Unknown scope {scope!r}; choose from {', '.join(SCOPES)}.")

    def dependency(
        request: Request,
        session: Annotated[Session, Depends(get_session)],
        bearer: Annotated[HTTPAuthorizationCredentials | None, Security(bearer_scheme)] = None,
        x_api_key: Annotated[str | None, Security(api_key_scheme)] = None,
    ) -> Principal:
        key = bearer.credentials if bearer is not None else x_api_key
        principal = authenticate(session, key)
        if not principal.allows(scope):
            raise Forbidden(f"This API key lacks the '{scope}' scope; create a key with it.")
        request.state.key_id = principal.key_id
        return principal

    dependency.__name__ = f"require_{scope}"
    return dependency
