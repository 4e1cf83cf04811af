"""Durable, cancellable jobs: SQL records (the truth), RQ workers or an embedded executor.

- :mod:`.states`  job states and kinds; :mod:`.keys` every Redis key/name; :mod:`.config` knobs.
- :mod:`.store`   conditional state transitions of ``service.models_db.Job`` rows.
- :mod:`.context` what a task sees (progress, log, ``should_stop``); :mod:`.runner` one attempt.
- :mod:`.tasks`   one task function per kind (``sae_training``, ``diff_report``, ``recovery``).
- :mod:`.dispatch` RQ or embedded hand-over; :mod:`.worker` the warm, non-forking RQ worker;
  :mod:`.reaper` dead-worker detection; :mod:`.service` the API facade.
"""

from service.jobs.states import TERMINAL_STATES, JobKind, JobState

__all__ = ["TERMINAL_STATES", "JobKind", "JobState"]
