"""Errors of the job system, as service errors so the API maps each to one problem+json status."""

from __future__ import annotations

from service.errors import Conflict, ResourceNotFound, ServiceUnavailable


class QueueUnavailable(ServiceUnavailable):
    """Redis did not accept the job; nothing was recorded. Retry later or check MEDSEGLENS_REDIS_URL."""

    slug = "queue-unavailable"
    title = "Job queue unavailable"


class JobNotFound(ResourceNotFound):
    """No job with this id."""

    slug = "job-not-found"


class IdempotencyConflict(Conflict):
    """An Idempotency-Key was reused for a different request."""

    slug = "idempotency-conflict"
    title = "Idempotency key reused"


class JobAlreadyFinished(Conflict):
    """Cancel asked of a job that already succeeded or failed."""

    slug = "job-finished"
    title = "Job already finished"


class UnknownTask(LookupError):
    """A job kind without a registered task function (a deployment mismatch between API and worker)."""
