"""Job states and kinds: ``str`` enums so they serialise as plain strings in JSON and SQL."""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """Life cycle of a job record.

    ``queued -> running -> succeeded | failed | cancelled``; a queued job may go straight to
    ``cancelled``; a running job whose worker died goes to ``failed`` or back to ``queued`` when
    retries are left (see :mod:`service.jobs.reaper`).
    """

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        """True for the three end states, which never change again."""
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})


class JobKind(StrEnum):
    """What a job does; each kind has one task function in :mod:`service.jobs.tasks`."""

    SAE_TRAINING = "sae_training"
    DIFF_REPORT = "diff_report"
    RECOVERY = "recovery"
    RECOVERY_SUITE = "recovery_suite"
