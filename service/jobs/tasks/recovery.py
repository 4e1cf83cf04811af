"""Job kind ``recovery``: the failure-recovery benchmark (as ``medseglens recover``).

Params (``RecoveryRequest``): ``model_id``, ``sae_id`` (null -> the model's main SAE), ``target``
(cohort under ``ZOO/data``), ``protocol`` (``oracle`` | ``blind`` | ``blind-unlabelled`` | ``diff``
| ``diff-unlabelled``), ``region`` (scored region, default SNFH), ``threshold`` (failure Dice),
``diff_report_id`` (protocols diff and diff-unlabelled; default the zoo's report). The same
pipeline as ``medseglens recover --data ZOO/data/test`` (:func:`medseglens_core.interventions.pipeline.recover_from_zoo`): blind
protocols check harm on ``ZOO/data/val/<source>`` too and read the model's gate SAE (card
``role: gate``) when the zoo has one; every protocol carries the non-latent baselines. Writes
``<data_dir>/jobs/<job_id>/recovery.json`` (+ ``recovery.html``), served by
``GET /v1/jobs/{id}/result``.
"""

from __future__ import annotations

from typing import Any

from service.jobs.context import JobContext
from service.jobs.states import JobKind
from service.jobs.tasks.registry import register_task
from service.jobs.tasks.stoppable import stopping_progress

RESULT_FILE = "recovery.json"
SUMMARY_KEYS = ("protocol", "n_cases", "n_failures", "recovered_fraction", "dice_before", "dice_after")


def run(params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Run one protocol; returns ``{"result_ref", "summary", "provenance"}``."""
    from medseglens_core.interventions.pipeline import recover_from_zoo
    from medseglens_core.interventions.recovery import RecoveryConfig
    from medseglens_core.interventions.report import write_recovery
    from medseglens_core.zoo import test_data_dir

    model_id = params["model_id"]
    report = params.get("diff_report_id") or "zoo"
    (doc,) = recover_from_zoo(
        ctx.zoo, test_data_dir(ctx.zoo), model_id, params["target"], [params.get("protocol", "blind")],
        config=RecoveryConfig(region=params.get("region", "SNFH"), threshold=float(params.get("threshold", 0.5))),
        sae_id=params.get("sae_id"), diff_report=ctx.zoo / "reports" / report / "report.json",
        model=ctx.resources.model(ctx.zoo / "models" / model_id, ctx.device), device=ctx.device,
        progress=stopping_progress(ctx),
    )  # fmt: skip
    ctx.check()
    out = ctx.workdir
    out.mkdir(parents=True, exist_ok=True)
    write_recovery([doc], out)  # recovery.json + recovery.html
    summary = {k: doc.get(k) for k in SUMMARY_KEYS}
    summary["verdict"] = (doc.get("verdict") or {}).get("summary")
    return {
        "result_ref": f"/v1/jobs/{ctx.job_id}/result",
        "summary": summary,
        "provenance": doc["provenance"],
    }


register_task(JobKind.RECOVERY.value, run)
