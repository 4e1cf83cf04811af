"""Service test fixtures: a fresh database per test on SQLite AND PostgreSQL, app, client, keys.

PostgreSQL: ``MEDSEGLENS_TEST_POSTGRES_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``);
each test gets its own schema (``test_<uuid>``, selected with ``search_path``), dropped afterwards.
When PostgreSQL is unreachable the postgres variants skip, unless ``MEDSEGLENS_REQUIRE_SERVICES=1``
(CI), where they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

from service.app import create_app
from service.auth import SCOPES, create_key
from service.config import Settings
from service.db import create_tables, make_engine, make_sessionmaker, session_scope
from service.pool import ModelPool

PG_URL = os.environ.get("MEDSEGLENS_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REQUIRE_SERVICES = os.environ.get("MEDSEGLENS_REQUIRE_SERVICES") == "1"


def _postgres_schema_url() -> Iterator[str]:
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        admin.dispose()
        message = f"PostgreSQL unreachable at {make_url(PG_URL).render_as_string(hide_password=True)}: {exc}"
        if REQUIRE_SERVICES:
            pytest.fail(message)
        pytest.skip(message)
    schema = f"test_{uuid.uuid4().hex}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = make_url(PG_URL).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database: SQLite in tmp_path, or a fresh PostgreSQL schema."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'test.db'}"
    else:
        yield from _postgres_schema_url()


@pytest.fixture
def settings(tmp_path: Path, database_url: str) -> Settings:
    """Settings for an isolated service: its own data dir, database and (empty) zoo."""
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url,
        zoo=tmp_path / "zoo",
        device="cpu",
        max_upload_bytes=2 * 2**20,
        max_voxels=100_000,
        log_level="WARNING",
    )


@pytest.fixture
def make_key(settings: Settings) -> Callable[..., str]:
    """``make_key("read,segment")`` -> a plain API key stored in the test database."""

    def _make(scopes: str = ",".join(SCOPES), name: str = "test") -> str:
        engine = make_engine(settings.database_url)
        create_tables(engine)
        with session_scope(make_sessionmaker(engine)) as session:
            _, plain = create_key(session, name, scopes)
        engine.dispose()
        return plain

    return _make


@pytest.fixture
def pool_factory(settings: Settings) -> Callable[..., ModelPool]:
    """A pool over the test zoo, with optional stub loaders (no torch model is built)."""

    def _make(**loaders) -> ModelPool:
        return ModelPool(settings.zoo_dir, device="cpu", prefix_cache_bytes=1024, **loaders)

    return _make


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """A TestClient over a fresh app (lifespan run: tables made, pool loaded from the empty zoo)."""
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


@pytest.fixture
def admin_headers(make_key: Callable[..., str]) -> dict[str, str]:
    return {"Authorization": f"Bearer {make_key()}"}
