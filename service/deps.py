"""Shared FastAPI dependencies as ``Annotated`` aliases (settings, session, pool, storage, keys, ids).

Routes declare what they need by type; existence and permission checks live here, not in handlers.
Put the key alias first in a handler's parameters so authentication runs before any lookup.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request
from sqlalchemy.orm import Session

from service.auth import Principal, require_scope
from service.config import Settings, get_settings
from service.db import get_session
from service.errors import ResourceNotFound
from service.models_db import Volume
from service.observability import Metrics
from service.pool import ModelPool
from service.storage import ID_PATTERN, Storage


def get_pool(request: Request) -> ModelPool:
    """The app's resident model pool."""
    return request.app.state.pool


def get_storage(request: Request) -> Storage:
    """The app's data directory."""
    return request.app.state.storage


def get_metrics(request: Request) -> Metrics:
    """The app's Prometheus metrics."""
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
PoolDep = Annotated[ModelPool, Depends(get_pool)]
StorageDep = Annotated[Storage, Depends(get_storage)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]

ReadKey = Annotated[Principal, Depends(require_scope("read"))]
SegmentKey = Annotated[Principal, Depends(require_scope("segment"))]
InterveneKey = Annotated[Principal, Depends(require_scope("intervene"))]
TrainKey = Annotated[Principal, Depends(require_scope("train"))]
AdminKey = Annotated[Principal, Depends(require_scope("admin"))]
# Backwards-friendly name used in the brief: the caller's key with the read scope.
KeyDep = ReadKey

ServerId = Annotated[
    str,
    Path(pattern=ID_PATTERN, description="Server-made id: 32 lowercase hex characters.", examples=["0" * 32]),
]
CatalogId = Annotated[
    str,
    Path(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$",
        description="Zoo entry name (letters, digits, '_', '.', '-').",
    ),
]


def volume_or_404(volume_id: ServerId, session: SessionDep) -> Volume:
    """The volume ``volume_id`` or a 404 problem."""
    volume = session.get(Volume, volume_id)
    if volume is None:
        raise ResourceNotFound(f"No volume {volume_id}; list volumes with GET /v1/volumes.")
    return volume


VolumeDep = Annotated[Volume, Depends(volume_or_404)]
