"""Knobs of the job system, read from ``MEDSEGLENS_JOB_*`` environment variables.

They live apart from :class:`service.config.Settings` (which names the shared resources: data
directory, database, Redis, zoo, device) because only the API's job routes and the workers read
them. Defaults suit production; tests shorten the intervals.

- ``MEDSEGLENS_JOB_QUEUE`` (``default``): logical queue the API submits to.
- ``MEDSEGLENS_JOB_HEARTBEAT_S`` (2.0 s): how often a running job writes its heartbeat.
- ``MEDSEGLENS_JOB_STALE_AFTER_S`` (60 s): a running job whose heartbeat is older is declared
  dead by the reaper (its worker was killed, lost power or lost the database).
- ``MEDSEGLENS_JOB_MAX_ATTEMPTS`` (1): attempts per job; above 1 a dead job is re-queued
  instead of failed until its attempts are used up.
- ``MEDSEGLENS_JOB_TIMEOUT_S`` (86400 s): wall-clock limit of one attempt; over it the job
  is stopped like a cancel and ends ``failed`` with a timeout reason.
- ``MEDSEGLENS_JOB_POLL_S`` (0.5 s): how often a running job checks for a cancel request.
- ``MEDSEGLENS_JOB_PROGRESS_MIN_S`` (0.5 s): minimum interval between progress writes
  (at most 2 writes per second per job by default).
- ``MEDSEGLENS_JOB_EMBEDDED_WORKERS`` (1): threads of the embedded executor.
- ``MEDSEGLENS_JOB_LOG_LINES`` (50): log lines kept in the job record.
- ``MEDSEGLENS_JOB_WARM_IMPORTS`` (true): a worker imports torch and the core before its first
  job (seconds at start instead of on the first job); tests with fake tasks turn it off.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class JobSettings(BaseSettings):
    """Job-system settings; see the module docstring for meaning, units and defaults."""

    model_config = SettingsConfigDict(env_prefix="MEDSEGLENS_JOB_", extra="ignore", frozen=True)

    queue: str = Field(default="default", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    heartbeat_s: float = Field(default=2.0, gt=0)
    stale_after_s: float = Field(default=60.0, gt=0)
    max_attempts: int = Field(default=1, ge=1, le=100)
    timeout_s: float = Field(default=86400.0, gt=0)
    poll_s: float = Field(default=0.5, gt=0)
    progress_min_s: float = Field(default=0.5, ge=0)
    embedded_workers: int = Field(default=1, ge=1, le=64)
    log_lines: int = Field(default=50, ge=1, le=10000)
    warm_imports: bool = True
