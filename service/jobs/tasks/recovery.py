"""Job kind ``recovery``: the failure-recovery benchmark (as ``medseglens recover``).

Params (``RecoveryRequest``): ``model_id``, ``sae_id`` (null -> the model's main SAE), ``target``
(cohort under ``ZOO/data``), ``protocol`` (``oracle`` | ``blind`` | ``blind-unlabelled``),
``region`` (scored region, default SNFH), ``threshold`` (failure Dice). As ``medseglens recover``
with ``--data ZOO/data/test``: blind protocols check harm on ``ZOO/data/val/<source>`` too and
read the model's gate SAE (card ``role: gate``) when the zoo has one. Writes
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
    from medseglens_core.interventions.zoo import (
        cohort_cases,
        load_gate_sae,
        load_items,
        load_sae_for,
        source_cohort,
    )
    from medseglens_core.io import find_cases
    from medseglens_core.zoo import data_split, test_data_dir

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
    protocol = params.get("protocol", "blind")
    harm, gate_sae, gate_hook, gate_id = None, None, None, None
    if protocol != "oracle":
        val = data_split(ctx.zoo, source, "val")
        harm = load_items(net, hook, find_cases(val), source) if val.is_dir() else None
        gate_sae, gate_hook, gate_id = load_gate_sae(ctx.zoo, model_id)
    cfg = RecoveryConfig(region=params.get("region", "SNFH"), threshold=float(params.get("threshold", 0.5)))
    doc = run_recovery(
        sae, src, tgt, protocol, model_id=model_id, source=source, target=target, config=cfg,
        harm_items=harm or None, progress=progress, gate_sae=gate_sae, gate_hook=gate_hook,
    )  # fmt: skip
    ctx.check()
    doc["sae_id"] = sae_card.get("id", params.get("sae_id"))
    doc["gate_sae_id"] = gate_id
    from medseglens_core.provenance import provenance

    sae_dir = ctx.zoo / "saes" / str(doc["sae_id"])
    doc["provenance"] = provenance(ctx.zoo / "models" / model_id, sae_dir, zoo=ctx.zoo, device=ctx.device)
    out = ctx.workdir
    out.mkdir(parents=True, exist_ok=True)
    write_recovery([doc], out)  # recovery.json + recovery.html
    summary = {k: doc.get(k) for k in SUMMARY_KEYS}
    return {
        "result_ref": f"/v1/jobs/{ctx.job_id}/result",
        "summary": summary,
        "provenance": doc["provenance"],
    }


register_task(JobKind.RECOVERY.value, run)
