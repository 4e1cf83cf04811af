"""Idempotent schema upgrade, run after ``create_all`` at every start (API, worker, CLI).

The code base has no migration framework; ``create_all`` makes missing tables but never changes an
existing one. :func:`upgrade_schema` brings a database made by an older version up to date, on
SQLite and PostgreSQL alike:

1. every column the ORM declares but the table lacks is added (``ALTER TABLE ... ADD COLUMN``; the
   tenancy columns carry a server default, so existing rows land in the ``default`` project),
   and their indexes are created;
2. the ``default`` project row exists (fixed id :data:`~service.models_db.DEFAULT_PROJECT_ID`), so the
   existing demo key keeps working, now as a key of that project;
3. the audit table refuses UPDATE and DELETE (triggers): it is append-only.

Running it again changes nothing. Two processes starting at once may race on step 1: a failed
``ADD COLUMN`` is re-checked and ignored when the column is there now.
"""

from __future__ import annotations

import logging

from sqlalchemy import Engine, Index, inspect, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.schema import CreateIndex

from service.models_db import DEFAULT_PROJECT, DEFAULT_PROJECT_ID, AuditEvent, Base, Project, utcnow

log = logging.getLogger("medseglens.db")

_TRIGGERS = {
    "sqlite": [
        f"CREATE TRIGGER IF NOT EXISTS audit_log_no_{op.lower()} BEFORE {op} ON {AuditEvent.__tablename__} "
        "BEGIN SELECT RAISE(ABORT, 'audit_log is append-only'); END"
        for op in ("UPDATE", "DELETE")
    ],
    "postgresql": [
        "CREATE OR REPLACE FUNCTION audit_log_append_only() RETURNS trigger AS $$ "
        "BEGIN RAISE EXCEPTION 'audit_log is append-only'; END; $$ LANGUAGE plpgsql",
        f"CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON {AuditEvent.__tablename__} "
        "FOR EACH ROW EXECUTE FUNCTION audit_log_append_only()",
    ],
}
_PG_TRIGGER_EXISTS = (
    "SELECT 1 FROM pg_trigger WHERE tgname = 'audit_log_append_only' "
    f"AND tgrelid = to_regclass('{AuditEvent.__tablename__}')"
)


def _add_missing_columns(engine: Engine) -> list[str]:
    added: list[str] = []
    for table in Base.metadata.sorted_tables:
        present = {c["name"] for c in inspect(engine).get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            ddl_type = column.type.compile(dialect=engine.dialect)
            default = ""
            if column.server_default is not None:
                default = f" NOT NULL DEFAULT '{column.server_default.arg}'"
            stmt = f'ALTER TABLE {table.name} ADD COLUMN "{column.name}" {ddl_type}{default}'
            try:
                with engine.begin() as conn:
                    conn.execute(text(stmt))
            except DBAPIError:
                if column.name not in {c["name"] for c in inspect(engine).get_columns(table.name)}:
                    raise
                continue  # another process added it first
            added.append(f"{table.name}.{column.name}")
        indexes = {i["name"] for i in inspect(engine).get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexes and all(c.name for c in index.columns):
                _create_index(engine, index)
    return added


def _create_index(engine: Engine, index: Index) -> None:
    try:
        with engine.begin() as conn:
            conn.execute(CreateIndex(index, if_not_exists=True))
    except DBAPIError:  # pragma: no cover - a concurrent start made it
        log.debug("index %s exists already", index.name)


def _ensure_default_project(engine: Engine) -> None:
    with engine.begin() as conn:
        exists = conn.execute(
            text("SELECT 1 FROM projects WHERE id = :id"), {"id": DEFAULT_PROJECT_ID}
        ).first()
        if exists is None:
            try:
                conn.execute(
                    Project.__table__.insert().values(
                        id=DEFAULT_PROJECT_ID, name=DEFAULT_PROJECT, created=utcnow(), deleted=None
                    )
                )
            except DBAPIError:  # pragma: no cover - a concurrent start inserted it
                log.debug("default project exists already")


def _ensure_triggers(engine: Engine) -> None:
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            if conn.execute(text(_PG_TRIGGER_EXISTS)).first() is not None:
                return
    try:
        with engine.begin() as conn:
            for stmt in _TRIGGERS.get(engine.dialect.name, []):
                conn.execute(text(stmt))
    except DBAPIError:  # pragma: no cover - a concurrent start made them
        log.debug("audit triggers exist already")


def upgrade_schema(engine: Engine) -> list[str]:
    """Bring an existing database up to the ORM's schema (idempotent); returns the columns added."""
    added = _add_missing_columns(engine)
    if added:
        log.info("schema upgraded", extra={"columns_added": added})
    _ensure_default_project(engine)
    _ensure_triggers(engine)
    return added
