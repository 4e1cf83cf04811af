"""SQL tables (SQLAlchemy 2 typed ORM). Portable between SQLite and PostgreSQL.

Ids are server-made 32-character lowercase hex strings (uuid4), see ``service.storage.new_id``.
Timestamps are timezone-aware UTC. File paths stored here are relative to the data directory.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Integer, String, Text, TypeDecorator
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utcnow() -> datetime:
    """The current time, timezone-aware UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored as UTC and returned timezone-aware (SQLite drops the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("UTCDateTime needs a timezone-aware datetime; use models_db.utcnow().")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


ID = String(32)

# The project of every row made before projects existed (and of rows made outside any request):
# a fixed id, so the schema upgrade and column defaults need no lookup.
DEFAULT_PROJECT_ID = "0" * 32
DEFAULT_PROJECT = "default"


def project_column() -> Mapped[str]:
    """``project_id`` of a tenant row: indexed, defaulted to the default project on both sides."""
    return mapped_column(ID, default=DEFAULT_PROJECT_ID, server_default=DEFAULT_PROJECT_ID, index=True)


class Base(DeclarativeBase):
    """Declarative base of every table."""

    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON(), list[Any]: JSON()}


class Project(Base):
    """A tenant: keys and the data they make belong to one. Names are unique forever (a deleted
    project keeps its row, ``deleted`` set, so audit rows naming it stay unambiguous)."""

    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    deleted: Mapped[datetime | None] = mapped_column(default=None)


class ApiKey(Base):
    """An API key: only its sha256 is stored; ``prefix`` (the first characters) identifies it to people."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    prefix: Mapped[str] = mapped_column(String(16))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    scopes: Mapped[list[Any]] = mapped_column(JSON)
    created: Mapped[datetime] = mapped_column(default=utcnow)
    revoked: Mapped[datetime | None] = mapped_column(default=None)
    project_id: Mapped[str] = project_column()
    expires: Mapped[datetime | None] = mapped_column(default=None)
    last_used: Mapped[datetime | None] = mapped_column(default=None)


class Volume(Base):
    """An uploaded case: four modalities (or one 4-D file) and an optional label map.

    ``shape`` is ``[X, Y, Z]`` of the RAS-canonical arrays, ``spacing`` in mm in that axis order;
    ``files`` is ``[{role, sha256, bytes, path}]`` with ``path`` relative to the data directory;
    ``modality_order`` is the 4th-axis order of a 4-D ``image`` upload (None for separate files).
    """

    __tablename__ = "volumes"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    created: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    cohort: Mapped[str | None] = mapped_column(String(100), index=True, default=None)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    shape: Mapped[list[Any]] = mapped_column(JSON)
    spacing: Mapped[list[Any]] = mapped_column(JSON)
    files: Mapped[list[Any]] = mapped_column(JSON)
    has_label: Mapped[bool] = mapped_column(Boolean, default=False)
    modality_order: Mapped[list[Any] | None] = mapped_column(JSON, default=None)
    project_id: Mapped[str] = project_column()


class Segmentation(Base):
    """A model's segmentation of one volume; artefacts (mask, latent maps) live under ``path``."""

    __tablename__ = "segmentations"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    created: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    volume_id: Mapped[str] = mapped_column(ID, ForeignKey("volumes.id", ondelete="CASCADE"), index=True)
    model_id: Mapped[str] = mapped_column(String(128))
    sae_id: Mapped[str | None] = mapped_column(String(128), default=None)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    path: Mapped[str] = mapped_column(Text)
    project_id: Mapped[str] = project_column()


class Intervention(Base):
    """An edit of SAE latents applied to one volume's forward pass, with its effect."""

    __tablename__ = "interventions"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    created: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    volume_id: Mapped[str] = mapped_column(ID, ForeignKey("volumes.id", ondelete="CASCADE"), index=True)
    model_id: Mapped[str] = mapped_column(String(128))
    sae_id: Mapped[str] = mapped_column(String(128))
    edits: Mapped[list[Any]] = mapped_column(JSON)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    path: Mapped[str] = mapped_column(Text)
    project_id: Mapped[str] = project_column()


class DiffReport(Base):
    """A cross-dataset / cross-architecture diff report made by a job (zoo reports are on disk)."""

    __tablename__ = "diff_reports"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    created: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    title: Mapped[str] = mapped_column(String(300), default="")
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    job_id: Mapped[str | None] = mapped_column(ID, default=None)
    path: Mapped[str] = mapped_column(Text)
    project_id: Mapped[str] = project_column()


class JobState(enum.StrEnum):
    """Life cycle of a job."""

    queued = "queued"
    running = "running"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"


class Job(Base):
    """A long task (SAE training, diff report, recovery benchmark) run by RQ or the embedded executor."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    kind: Mapped[str] = mapped_column(String(64), index=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16), default=JobState.queued.value, index=True)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    created: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started: Mapped[datetime | None] = mapped_column(default=None)
    finished: Mapped[datetime | None] = mapped_column(default=None)
    result_ref: Mapped[str | None] = mapped_column(Text, default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), unique=True, default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Fields owned by service.jobs (durability, cancel, progress reporting):
    queue: Mapped[str] = mapped_column(String(64), default="default")
    heartbeat: Mapped[datetime | None] = mapped_column(default=None, index=True)
    worker_id: Mapped[str | None] = mapped_column(String(200), default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    log_tail: Mapped[str | None] = mapped_column(Text, default=None)
    project_id: Mapped[str] = project_column()


class AuditEvent(Base):
    """One append-only audit row: who (key id, never the key), in which project, did what to what.

    ``outcome`` is the HTTP status (``"201"``, ``"404"``...) of a request, or ``"ok"`` for a job
    transition. Rows are never updated or deleted (database triggers refuse it, see
    ``service.migrations``).
    """

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    key_id: Mapped[str | None] = mapped_column(ID, default=None)
    project: Mapped[str | None] = mapped_column(String(100), default=None, index=True)
    action: Mapped[str] = mapped_column(String(100))
    resource: Mapped[str] = mapped_column(String(64), index=True)
    resource_id: Mapped[str | None] = mapped_column(String(128), default=None)
    request_id: Mapped[str | None] = mapped_column(String(128), default=None)
    outcome: Mapped[str] = mapped_column(String(32))


# Tables whose rows belong to a project: every ORM query inside a request is limited to the
# caller's project (``service.tenancy``).
TENANT_MODELS: tuple[type[Base], ...] = (ApiKey, Volume, Segmentation, Intervention, DiffReport, Job)
