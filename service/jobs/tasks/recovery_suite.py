"""Job kind ``recovery_suite``: the leave-one-shift-out evaluation (as ``medseglens recover-suite``).

Params (``RecoverySuiteRequest``): ``model_ids``, ``shifts``, ``protocols``, ``n_target``,
``calib_n``, ``n_source``, ``n_diff``, ``seed``. Runs
:func:`medseglens_core.interventions.suite.run_suite` into ``<data_dir>/jobs/<job_id>/suite/``
(generated cases, per-run recovery.json, suite.html) and copies ``suite.json`` next to it,
served by ``GET /v1/jobs/{id}/result``. A retried job starts its folder afresh.
"""

from __future__ import annotations

import shutil
from typing import Any

from service.jobs.context import JobContext
from service.jobs.states import JobKind
from service.jobs.tasks.registry import register_task
from service.jobs.tasks.stoppable import stopping_progress

RESULT_FILE = "suite.json"


def run(params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Run the suite; returns ``{"result_ref", "summary"}``."""
    from medseglens_core.interventions.suite import SuiteConfig, run_suite

    cfg = SuiteConfig(
        n_source=int(params.get("n_source", 4)),
        n_target=int(params.get("n_target", 9)),
        n_diff=int(params.get("n_diff", 6)),
        calib_n=int(params.get("calib_n", 3)),
        seed=int(params.get("seed", 9100)),
        protocols=tuple(params.get("protocols") or ("oracle", "blind", "diff")),
    )
    out = ctx.workdir / "suite"
    shutil.rmtree(out, ignore_errors=True)  # a retried job's partial run
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = run_suite(ctx.zoo, out, models=params.get("model_ids"), kinds=params.get("shifts"), config=cfg,
                    progress=stopping_progress(ctx))  # fmt: skip
    ctx.check()
    shutil.copyfile(out / RESULT_FILE, ctx.workdir / RESULT_FILE)
    return {"result_ref": f"/v1/jobs/{ctx.job_id}/result", "summary": doc["summary"]}


register_task(JobKind.RECOVERY_SUITE.value, run)
