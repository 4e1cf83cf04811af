"""Job kind ``recovery``: the failure-recovery benchmark (as ``medseglens recover``).

Params (``RecoveryRequest``): ``model_id``, ``sae_id`` (null -> the model's main SAE), ``target``
(cohort under ``ZOO/data``), ``protocol`` (``oracle`` | ``blind`` | ``blind-unlabelled``),
``region`` (scored region, default SNFH), ``threshold`` (failure Dice). Writes
``<data_dir>/jobs/<job_id>/recovery.json`` (+ ``recovery.html``), served by
``GET /v1/jobs/{id}/result``.
"""

from __future__ import annotations

from typing import Any

from medseglens_core.errors import InvalidInput
from service.jobs.context import JobContext
from service.jobs.states import JobKind
from service.jobs.tasks.registry import register_task
from service.jobs.tasks.stoppable import stopping_progress

RESULT_FILE = "recovery.json"
SUMMARY_KEYS = ("protocol", "n_cases", "n_failures", "recovered_fraction", "dice_before", "dice_after")


def run(params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Run one protocol; returns ``{"result_ref", "summary"}``."""
    from medseglens_core.interventions.recovery import RecoveryConfig, run_recovery
    from medseglens_core.interventions.report import write_recovery
    from medseglens_core.interventions.zoo import cohort_cases, load_items, load_sae_for, source_cohort
    from medseglens_core.zoo import test_data_dir

    model_id, target = params["model_id"], params["target"]
    net, card = ctx.resources.model(ctx.zoo / "models" / model_id, ctx.device)
    sae, sae_card = load_sae_for(ctx.zoo, model_id, params.get("sae_id"))
    source = source_cohort(card)
    if source == target:
        raise InvalidInput(f"target {target!r} is the model's training cohort; pick another cohort")
    data = test_data_dir(ctx.zoo)
    progress = stopping_progress(ctx)
    hook = sae_card.get("hook") or net.default_hook
    src = load_items(net, hook, cohort_cases(data, source), source, progress=progress)
    tgt = load_items(net, hook, cohort_cases(data, target), target, progress=progress)
    cfg = RecoveryConfig(region=params.get("region", "SNFH"), threshold=float(params.get("threshold", 0.5)))
    doc = run_recovery(
        sae, src, tgt, params.get("protocol", "blind"),
        model_id=model_id, source=source, target=target, config=cfg, progress=progress,
    )  # fmt: skip
    ctx.check()
    doc["sae_id"] = sae_card.get("id", params.get("sae_id"))
    out = ctx.workdir
    out.mkdir(parents=True, exist_ok=True)
    write_recovery([doc], out)  # recovery.json + recovery.html
    return {"result_ref": f"/v1/jobs/{ctx.job_id}/result", "summary": {k: doc.get(k) for k in SUMMARY_KEYS}}


register_task(JobKind.RECOVERY.value, run)
