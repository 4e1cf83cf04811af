"""The task registry: one function per job kind, refusing duplicates unless replaced explicitly."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from service.jobs.context import JobContext
from service.jobs.errors import UnknownTask

# A task takes the job's JSON params and its context and returns a JSON-able result. The key
# ``result_ref`` (a path such as ``/v1/saes/<id>``) becomes the job's result link.
TaskFn = Callable[[dict[str, Any], JobContext], dict[str, Any]]

_TASKS: dict[str, TaskFn] = {}


def register_task(kind: str, fn: TaskFn, *, replace: bool = False) -> None:
    """Register ``fn`` for ``kind``; a second registration needs ``replace=True`` (plugins, tests)."""
    if kind in _TASKS and not replace:
        raise ValueError(f"a task is already registered for job kind {kind!r}; pass replace=True")
    _TASKS[kind] = fn


def get_task(kind: str) -> TaskFn:
    """The task for ``kind``."""
    try:
        return _TASKS[kind]
    except KeyError:
        raise UnknownTask(
            f"no task registered for job kind {kind!r} in this process (known: {sorted(_TASKS)}); "
            "run API and workers from the same release"
        ) from None


def registered_kinds() -> tuple[str, ...]:
    """Kinds with a task, sorted."""
    return tuple(sorted(_TASKS))
