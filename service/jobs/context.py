"""What a task function sees while it runs: progress, log, cancel, paths and resident models.

The task thread only touches memory here; a watcher thread (:mod:`service.jobs.runner`) writes
progress and heartbeats to the database at a bounded rate and raises the stop flag when a cancel
is requested or the attempt's deadline passes. So a training loop may call ``progress`` every
step at no cost, and ``should_stop`` answers from memory.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

log = logging.getLogger("medseglens.jobs")


class StopReason(StrEnum):
    """Why a running job was asked to stop."""

    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    LOST = "lost"  # the record left `running` for this worker (reaped after a stall)
    SHUTDOWN = "shutdown"  # the process is stopping: the job goes back to the queue


class JobStopped(Exception):  # noqa: N818 - a control-flow signal, like StopIteration
    """Raised by :meth:`JobContext.check` (or a task) to end the job early on a stop request."""


def _jsonable(value: Any) -> Any:
    # Progress payloads come from training loops: numpy/torch scalars and NaN must not reach JSON.
    if isinstance(value, bool | str) or value is None:
        return value
    if isinstance(value, int | float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    item = getattr(value, "item", None)
    if callable(item):
        return _jsonable(item())
    return str(value)


class ProgressState:
    """Latest progress, metrics and log lines of one job, shared between task and watcher threads."""

    def __init__(self, log_lines: int) -> None:
        self._lock = threading.Lock()
        self._lines: deque[str] = deque(maxlen=log_lines)
        self._progress = 0.0
        self._metrics: dict[str, Any] = {}
        self._dirty = False
        self.reports = 0  # progress calls received (for tests and benchmarks)

    def update(self, payload: dict[str, Any]) -> None:
        """Merge ``payload`` into the metrics; ``progress`` (0..1) or ``step``/``total_steps`` set the fraction."""
        clean = _jsonable(dict(payload))
        with self._lock:
            frac = clean.pop("progress", None)
            if frac is None and clean.get("step") is not None and clean.get("total_steps"):
                frac = clean["step"] / clean["total_steps"]
            if isinstance(frac, int | float):
                self._progress = min(max(float(frac), 0.0), 1.0)
            self._metrics.update(clean)
            self._dirty = True
            self.reports += 1

    @property
    def dirty(self) -> bool:
        """True when something changed since the last :meth:`take`."""
        return self._dirty

    def add_line(self, line: str) -> None:
        """Append one log line (kept: the last ``log_lines``)."""
        with self._lock:
            self._lines.append(line.rstrip()[:500])
            self._dirty = True

    def take(self) -> tuple[bool, float, dict[str, Any], str]:
        """``(dirty, progress, metrics, log_tail)``, clearing the dirty flag."""
        with self._lock:
            dirty, self._dirty = self._dirty, False
            return dirty, self._progress, dict(self._metrics), "\n".join(self._lines)


@dataclass
class JobContext:
    """Passed to every task function with the job's params.

    ``zoo``/``data_dir`` are absolute; ``workdir`` (``<data_dir>/jobs/<job_id>``) is private to this
    attempt's scratch files. ``device`` is the worker's torch device string (``cpu``, ``cuda:0``).
    ``resources`` holds objects a worker keeps loaded between jobs.
    """

    job_id: str
    kind: str
    zoo: Path
    data_dir: Path
    device: str
    resources: Any
    state: ProgressState
    stop_event: threading.Event = field(default_factory=threading.Event)
    stop_reason: StopReason | None = None
    started_monotonic: float = field(default_factory=time.monotonic)

    @property
    def workdir(self) -> Path:
        return self.data_dir / "jobs" / self.job_id

    def progress(self, payload: dict[str, Any]) -> None:
        """Report progress, e.g. ``{"step": 10, "total_steps": 100, "loss": .., "explained_variance": .., "l0": ..}``."""
        self.state.update(payload)

    def log(self, message: str) -> None:
        """One line for the job's log tail (shown by ``GET /v1/jobs/{id}``) and the process log."""
        log.info("job %s: %s", self.job_id, message)
        self.state.add_line(message)

    def should_stop(self) -> bool:
        """True once a cancel, timeout or loss of the record asks the job to end (answers from memory)."""
        return self.stop_event.is_set()

    def check(self) -> None:
        """Raise :class:`JobStopped` when :meth:`should_stop` is true; call between units of work."""
        if self.stop_event.is_set():
            raise JobStopped(str(self.stop_reason or StopReason.CANCELLED))

    def stop(self, reason: StopReason) -> None:
        """Ask the task to stop (called by the watcher)."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self.stop_event.set()

    def progress_callback(self) -> Callable[[dict[str, Any]], None]:
        """``self.progress`` as a plain callable for core functions."""
        return self.progress


def result_json(result: dict[str, Any]) -> dict[str, Any]:
    """A task's result made JSON-safe (round-tripped through ``json``)."""
    return json.loads(json.dumps(_jsonable(result)))
