"""Task functions, one module per job kind, registered by kind on import.

Tasks take JSON params (ids, names, numbers) and a :class:`~service.jobs.context.JobContext`;
they never receive live objects through the queue.
"""

# Builtin kinds register themselves (imported for that side effect).
from service.jobs.tasks import diff_report, recovery, recovery_suite, sae_training  # noqa: E402, F401, I001
from service.jobs.tasks.registry import TaskFn, get_task, register_task, registered_kinds

__all__ = ["TaskFn", "get_task", "register_task", "registered_kinds"]
