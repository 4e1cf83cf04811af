"""Job kind ``diff_report``: the cross-dataset / cross-architecture diff report of the zoo.

Params (``DiffReportRequest``): ``source`` (training cohort; null -> from the model cards),
``max_cases_per_cohort``, ``n_perm``. Calls ``medseglens_core.analysis.report.build_diff_report``
on every zoo model with an SAE over the cohorts under ``ZOO/data``. The report is built in
``ZOO/reports/.staging-<job>/report`` and renamed to ``ZOO/reports/<report_id>/`` when complete,
where ``GET /v1/diff-reports`` finds it; the job's link is ``/v1/diff-reports/<report_id>``.
"""

from __future__ import annotations

import shutil
from typing import Any

from service.jobs.context import JobContext
from service.jobs.states import JobKind
from service.jobs.tasks.common import fresh_dir, publish_dir
from service.jobs.tasks.registry import register_task
from service.jobs.tasks.stoppable import stopping_progress


def run(params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Build and publish the report; returns ``{"result_ref", "report_id"}``."""
    from medseglens_core.analysis.report import build_diff_report
    from medseglens_core.zoo import test_data_dir
    from service.storage import new_id

    report_id = new_id()
    staging_root = fresh_dir(ctx.zoo / "reports" / f".staging-{ctx.job_id}")
    try:
        staging = fresh_dir(staging_root / "report")
        report = build_diff_report(
            ctx.zoo,
            test_data_dir(ctx.zoo),
            staging,
            source=params.get("source"),
            max_cases_per_cohort=int(params.get("max_cases_per_cohort", 20)),
            n_perm=int(params.get("n_perm", 500)),
            progress=stopping_progress(ctx),
        )
        ctx.check()
        publish_dir(staging, ctx.zoo / "reports" / report_id)
    finally:
        shutil.rmtree(staging_root, ignore_errors=True)
    return {
        "result_ref": f"/v1/diff-reports/{report_id}",
        "report_id": report_id,
        "models": sorted(report.get("models", {})),
        "provenance": _provenance(ctx),
    }


def _provenance(ctx: JobContext) -> dict[str, Any]:
    """Per model of the report: the provenance block of the model and its main SAE."""
    from medseglens_core.analysis.zoo import discover_zoo
    from medseglens_core.errors import NotFound
    from medseglens_core.provenance import provenance

    try:
        entries = discover_zoo(ctx.zoo)
    except NotFound:  # a zoo without SAEs: no model of it has a report section
        return {}
    return {e.model_id: provenance(e.model_dir, e.sae_dir, zoo=ctx.zoo, device=ctx.device) for e in entries}


register_task(JobKind.DIFF_REPORT.value, run)
