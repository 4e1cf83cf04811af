"""Job kind ``diff_report``: build a cross-dataset / cross-architecture diff report.

Params: ``model_id`` and ``sae_id`` (zoo names), ``cohorts`` (zoo data names), ``reference``
(cohort or null), ``title``, plus builder options passed through (``alpha``, ``top_k`` ...).
The report (``report.json``, ``report.html``) is built in ``ZOO/reports/.staging-<job>/report``
and renamed to ``ZOO/reports/<report_id>/`` when complete, where ``GET /v1/diff-reports`` finds
it; its link is ``/v1/diff-reports/<report_id>``.
"""

from __future__ import annotations

import shutil
from typing import Any

from service.jobs.context import JobContext, JobStopped
from service.jobs.states import JobKind
from service.jobs.tasks.common import catalog_dir, fresh_dir, publish_dir
from service.jobs.tasks.core_call import call_accepting, resolve
from service.jobs.tasks.registry import register_task


def run(params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Build and publish the report; returns ``{"result_ref", "report_id"}``."""
    from service.storage import new_id

    model_dir = catalog_dir(ctx.zoo / "models", params["model_id"], "model")
    sae_dir = catalog_dir(ctx.zoo / "saes", params["sae_id"], "SAE")
    for c in params.get("cohorts", []):
        catalog_dir(ctx.zoo / "data", c, "cohort")
    build = resolve("medseglens_core.reports", ("build_diff_report",))
    report_id = new_id()
    staging_root = fresh_dir(ctx.zoo / "reports" / f".staging-{ctx.job_id}")
    staging = fresh_dir(staging_root / "report")
    try:
        model, model_card = ctx.resources.model(model_dir, ctx.device)
        sae, sae_card = ctx.resources.sae(sae_dir, ctx.device)
        extra = {k: v for k, v in params.items() if k not in ("model_id", "sae_id")}
        call_accepting(
            build,
            {
                **extra,
                "model": model,
                "model_card": model_card,
                "sae": sae,
                "sae_card": sae_card,
                "data_dir": ctx.zoo / "data",
                "out_dir": staging,
                "device": ctx.device,
                "progress": ctx.progress,
                "should_stop": ctx.should_stop,
            },
        )
        if ctx.should_stop():
            raise JobStopped("stopped while building the report")
        publish_dir(staging, ctx.zoo / "reports" / report_id)
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)
    return {"result_ref": f"/v1/diff-reports/{report_id}", "report_id": report_id}


register_task(JobKind.DIFF_REPORT.value, run)
