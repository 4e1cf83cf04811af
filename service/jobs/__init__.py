"""Durable, cancellable jobs: SQL records (the truth), RQ workers or an embedded executor.

- :mod:`.states`  job states and kinds; :mod:`.keys` every Redis key/name; :mod:`.config` knobs.
- :mod:`.store`   conditional state transitions of ``service.models_db.Job`` rows.
- :mod:`.context` what a task sees (progress, log, ``should_stop``); :mod:`.runner` one attempt.
- :mod:`.tasks`   one task function per kind (``sae_training``, ``diff_report``, ``recovery``).
- :mod:`.dispatch` RQ or embedded hand-over; :mod:`.bootstrap` the process's worker runtime and
  the RQ entry point; :mod:`.worker` the warm, non-forking RQ worker loop;
  :mod:`.reaper` dead-worker detection; :mod:`.service` the API facade.

Imports run one way (a test checks the graph has no cycle):
``worker -> bootstrap -> runner``; ``worker -> dispatch``; ``service -> dispatch, runner``.
"""

from service.jobs.states import TERMINAL_STATES, JobKind, JobState

__all__ = ["TERMINAL_STATES", "JobKind", "JobState"]
