"""A progress callback that also stops the work: core functions without ``should_stop`` still
call ``progress`` often, so raising :class:`JobStopped` from it ends them within one unit of work."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from service.jobs.context import JobContext, JobStopped


def stopping_progress(ctx: JobContext) -> Callable[[dict[str, Any]], None]:
    """``ctx.progress`` that raises :class:`JobStopped` once the job is asked to stop."""

    def progress(event: dict[str, Any]) -> None:
        if ctx.should_stop():
            raise JobStopped(str(ctx.stop_reason))
        ctx.progress(event)
        if isinstance(event.get("stage"), str):
            ctx.log(" ".join(f"{k}={v}" for k, v in event.items()))

    return progress
