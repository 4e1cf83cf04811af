"""A tiny zoo built once per test process, and apps over it for the segmentation/intervention tests.

The zoo is ``tests.analysis.tinyzoo.build_tiny_zoo`` (32 px U-Net and SegFormer, 24-latent TopK
SAEs, 2 cohorts x 3 small cases), built into a temporary directory on first use and read-only
afterwards; its cases are linked as ``ZOO/data/test`` so latent cards can be computed. Models and
SAEs are loaded once per process too and handed to each test's fresh ``ModelPool`` by stub loaders,
so every app starts in milliseconds while running the real networks.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from service.app import create_app
from service.auth import SCOPES, create_key
from service.config import Settings
from service.db import create_tables, make_engine, make_sessionmaker, session_scope
from service.pool import ModelPool
from tests.service.builders import case_files, multipart

UNET, SEGFORMER = "unet-tiny", "segformer-tiny"
UNET_SAE, SEGFORMER_SAE = "unet-tiny-sae", "segformer-tiny-sae"
D_SAE = 24


@cache
def tiny_zoo() -> Path:
    """Path of the process-wide tiny zoo (built on first call, removed at exit)."""
    from tests.analysis.tinyzoo import build_tiny_zoo

    root = Path(tempfile.mkdtemp(prefix="msl-tinyzoo-"))
    atexit.register(shutil.rmtree, root, True)
    zoo, data = build_tiny_zoo(root)
    (zoo / "data").mkdir()
    (zoo / "data" / "test").symlink_to(data, target_is_directory=True)
    return zoo


@cache
def _loaded(kind: str, path: str) -> tuple[Any, dict]:
    if kind == "model":
        from medseglens_core.models.card import load_model

        return load_model(path)
    from medseglens_core.sae.io import load_sae

    return load_sae(path)


def tiny_pool(zoo: Path, **kwargs: Any) -> ModelPool:
    """A fresh pool (empty prefix cache) over ``zoo`` whose models were loaded once per process."""
    return ModelPool(
        zoo,
        device="cpu",
        model_loader=lambda p: _loaded("model", str(p)),
        sae_loader=lambda p: _loaded("sae", str(p)),
        **kwargs,
    )


def tiny_settings(tmp_path: Path, database_url: str | None = None) -> Settings:
    """Settings over the tiny zoo with their own data dir and SQLite database."""
    return Settings(
        data_dir=tmp_path / "data",
        database_url=database_url or f"sqlite:///{tmp_path / 'test.db'}",
        zoo=tiny_zoo(),
        device="cpu",
        max_upload_bytes=4 * 2**20,
        max_voxels=200_000,
        log_level="WARNING",
    )


def new_key(settings: Settings, scopes: str = ",".join(SCOPES)) -> str:
    """A plain API key with ``scopes`` stored in the settings' database."""
    engine = make_engine(settings.database_url)
    create_tables(engine)
    with session_scope(make_sessionmaker(engine)) as session:
        _, plain = create_key(session, "test", scopes)
    engine.dispose()
    return plain


@contextmanager
def tiny_client(
    tmp_path: Path, database_url: str | None = None, **pool_kwargs: Any
) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """``(client, admin headers)`` over a fresh app on the tiny zoo (SQLite unless ``database_url``)."""
    settings = tiny_settings(tmp_path, database_url)
    headers = {"Authorization": f"Bearer {new_key(settings)}"}
    app = create_app(settings, pool=tiny_pool(settings.zoo_dir, **pool_kwargs))
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client, headers


def upload(client: TestClient, headers: dict[str, str], *, label: bool = True, seed: int = 0) -> str:
    """Upload the builders' planted case; returns the volume id."""
    r = client.post("/v1/volumes", files=multipart(case_files(label=label, seed=seed)), headers=headers)
    assert r.status_code == 201, r.text
    return r.json()["id"]
