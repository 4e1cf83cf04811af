"""Every Redis key and RQ name this package uses, built in one place.

All keys carry the ``medseglens:`` prefix so several deployments (or test runs on one
database index) never collide with other RQ users.
"""

from __future__ import annotations

import os
import re
import socket

PREFIX = "medseglens"
DEFAULT_QUEUE = "default"
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def check_name(name: str, what: str = "queue") -> str:
    """Return ``name`` if it is a safe key component (letters, digits, ``_.-``, <= 64 chars)."""
    if not _NAME.match(name):
        raise ValueError(f"{what} name {name!r} must be 1-64 letters, digits, '_', '.' or '-'")
    return name


def rq_queue_name(queue: str = DEFAULT_QUEUE) -> str:
    """The RQ queue name for our logical ``queue`` (RQ stores it as ``rq:queue:<this>``)."""
    return f"{PREFIX}.{check_name(queue)}"


def cancel_key(job_id: str) -> str:
    """Redis key set when a cancel is requested; the running worker polls it (the DB flag is truth)."""
    return f"{PREFIX}:job:{check_name(job_id, 'job id')}:cancel"


def rq_job_id(job_id: str, attempt: int) -> str:
    """RQ's id for one attempt of our job (a retry is a new RQ job, so ids never clash)."""
    return f"{PREFIX}-{check_name(job_id, 'job id')}-{attempt}"


def worker_name(queue: str, device: str) -> str:
    """A worker's unique, readable name: ``host.pid.queue.device`` (device ``cuda:0`` -> ``cuda0``)."""
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())[:40]
    dev = re.sub(r"[^A-Za-z0-9]", "", device)
    return f"{host}.{os.getpid()}.{check_name(queue)}.{dev}"
