"""Job kind ``recovery``: the intervention recovery benchmark (oracle and blind protocols).

Params: ``model_id``, ``sae_id`` (zoo names), ``cohort`` (zoo data name of the failure cases),
``reference`` (cohort whose statistics patching uses), ``protocol`` (``oracle`` | ``blind``),
plus benchmark options passed through. The result JSON is written to
``<data_dir>/jobs/<job_id>/recovery.json`` and served by ``GET /v1/jobs/{id}/result``.
"""

from __future__ import annotations

import json
from typing import Any

from service.jobs.context import JobContext, JobStopped, result_json
from service.jobs.states import JobKind
from service.jobs.tasks.common import catalog_dir, write_json
from service.jobs.tasks.core_call import call_accepting, resolve
from service.jobs.tasks.registry import register_task

RESULT_FILE = "recovery.json"


def run(params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Run the benchmark; returns ``{"result_ref", "summary"}``."""
    model_dir = catalog_dir(ctx.zoo / "models", params["model_id"], "model")
    sae_dir = catalog_dir(ctx.zoo / "saes", params["sae_id"], "SAE")
    catalog_dir(ctx.zoo / "data", params["cohort"], "cohort")
    bench = resolve("medseglens_core.interventions", ("recovery_benchmark", "run_recovery"))
    model, model_card = ctx.resources.model(model_dir, ctx.device)
    sae, sae_card = ctx.resources.sae(sae_dir, ctx.device)
    extra = {k: v for k, v in params.items() if k not in ("model_id", "sae_id")}
    out = call_accepting(
        bench,
        {
            **extra,
            "model": model,
            "model_card": model_card,
            "sae": sae,
            "sae_card": sae_card,
            "data_dir": ctx.zoo / "data",
            "device": ctx.device,
            "progress": ctx.progress,
            "should_stop": ctx.should_stop,
        },
    )
    if ctx.should_stop():
        raise JobStopped("stopped during the benchmark")
    summary = out.to_dict() if hasattr(out, "to_dict") else out
    ctx.workdir.mkdir(parents=True, exist_ok=True)
    write_json(
        ctx.workdir / RESULT_FILE, result_json(summary if isinstance(summary, dict) else {"result": summary})
    )
    brief = json.loads((ctx.workdir / RESULT_FILE).read_text()).get("summary", {})
    return {"result_ref": f"/v1/jobs/{ctx.job_id}/result", "summary": brief}


register_task(JobKind.RECOVERY.value, run)
