"""Service settings: one pydantic-settings ``Settings`` read from ``MEDSEGLENS_*`` environment variables.

Defaults give a working single-machine service with nothing else installed:

- ``MEDSEGLENS_DATA_DIR`` (default ``./.medseglens``, relative to the working directory so that
  ``make run`` keeps everything inside the checkout; it is git-ignored): uploaded volumes,
  artefacts, the SQLite database and, unless ``MEDSEGLENS_ZOO`` says otherwise, the zoo.
- ``MEDSEGLENS_DATABASE_URL`` (default ``sqlite:///<DATA_DIR>/medseglens.db``); PostgreSQL as
  ``postgresql+psycopg://user@host:5432/db`` (a ``?options=-csearch_path%3Dschema`` query selects a schema).
- ``MEDSEGLENS_REDIS_URL`` (default unset: jobs run in an embedded executor).
- ``MEDSEGLENS_DEVICE``: ``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda:N``.
- ``MEDSEGLENS_PRECISION`` (default ``fp32``): the resident networks' precision, ``bf16`` (autocast
  on CPU or CUDA) or ``fp16`` (CUDA only); SAE codes stay float32. Recorded in every provenance block.
- ``MEDSEGLENS_ZOO`` (default ``<DATA_DIR>/zoo``): ``models/*``, ``saes/*``, ``reports/*``.
- ``MEDSEGLENS_MAX_UPLOAD_BYTES`` (default 1 GiB per request), ``MEDSEGLENS_MAX_VOXELS``
  (default 300**3 per modality volume).
- ``MEDSEGLENS_INFERENCE_CONCURRENCY`` (default 1 blocking inference call at a time per device).
- ``MEDSEGLENS_PREFIX_CACHE_BYTES`` (default 2 GiB of cached prefix activations).
- ``MEDSEGLENS_LOG_LEVEL`` (default ``INFO``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every knob of the service; see the module docstring for defaults and units."""

    model_config = SettingsConfigDict(env_prefix="MEDSEGLENS_", extra="ignore", frozen=True)

    data_dir: Path = Field(default=Path(".medseglens"), description="Files, SQLite database, default zoo.")
    database_url: str = Field(default="", description="SQLAlchemy URL; empty -> SQLite in data_dir.")
    redis_url: str | None = Field(default=None, description="Redis for RQ jobs; unset -> embedded executor.")
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        default="fp32", description="Resident networks' precision (bf16/fp16 autocast; fp16 needs CUDA)."
    )
    zoo: Path | None = Field(default=None, description="Zoo root; unset -> <data_dir>/zoo.")
    max_upload_bytes: int = Field(default=2**30, gt=0, description="Bytes per upload request.")
    max_voxels: int = Field(default=300**3, gt=0, description="Voxels per modality volume.")
    inference_concurrency: int = Field(default=1, ge=1, le=64, description="Blocking calls per device.")
    prefix_cache_bytes: int = Field(default=2 * 2**30, ge=0, description="LRU budget for prefix activations.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="after")
    def _fill_defaults(self) -> Settings:
        # frozen model: fill derived defaults through object.__setattr__ once, at validation.
        data_dir = self.data_dir.expanduser().absolute()
        object.__setattr__(self, "data_dir", data_dir)
        if not self.database_url:
            object.__setattr__(self, "database_url", f"sqlite:///{data_dir / 'medseglens.db'}")
        zoo = (self.zoo or data_dir / "zoo").expanduser().absolute()
        object.__setattr__(self, "zoo", zoo)
        return self

    @property
    def zoo_dir(self) -> Path:
        """The zoo root, always set after validation."""
        if self.zoo is None:  # pragma: no cover - filled by the validator
            raise RuntimeError("Settings.zoo was not filled; build Settings through its constructor.")
        return self.zoo


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment.

    Tests pass their own ``Settings`` to ``create_app(settings)``, which overrides this dependency.
    """
    return Settings()
