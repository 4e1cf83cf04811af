"""Job kind ``sae_training``: train an SAE on one model's hook activations and add it to the zoo.

Params (JSON; validated by the API schema ``SaeTrainingRequest``):
``model_id`` (zoo name), ``hook`` (hook point; null -> the model's default), ``cohorts``
(names under ``ZOO/data/``) or ``volume_ids`` (uploaded volumes), ``arch`` (``batchtopk`` |
``topk`` | ``relu``), ``expansion`` (d_sae / d_in), ``k`` (active latents per token), ``tokens``
(token budget) or ``steps``, ``seed``.

The SAE is trained into ``ZOO/saes/.staging-<job_id>/`` and renamed to ``ZOO/saes/<sae_id>/``
only after it is complete, so a cancelled or failed job leaves nothing in the zoo (entries
starting with ``.`` are never listed).
"""

from __future__ import annotations

import inspect
import json
import shutil
from collections.abc import Callable
from typing import Any

from medseglens_core.errors import InvalidInput
from medseglens_core.zoo import train_data_dir
from service.jobs.context import JobContext, JobStopped
from service.jobs.states import JobKind
from service.jobs.tasks.common import catalog_dir, fresh_dir, publish_dir, volumes_as_cases, write_json
from service.jobs.tasks.registry import register_task

Trainer = Callable[..., Any]
REQUIRED_FILES = ("cfg.json", "sae_weights.safetensors")
# Tokens per optimisation step assumed when a client gives ``steps`` and the trainer takes only a budget.
TOKENS_PER_STEP = 4096


def default_trainer() -> Trainer:
    """``medseglens_core.sae.train_sae_for_model`` (imported on first use; the worker pre-imports it)."""
    from medseglens_core.sae import train_sae_for_model

    return train_sae_for_model


def sae_id_for(params: dict[str, Any], job_id: str) -> str:
    """A readable, unique zoo name: ``<model>.<arch>.x<expansion>.k<k>.<job id prefix>``."""
    return f"{params['model_id']}.{params['arch']}.x{params['expansion']}.k{params['k']}.{job_id[:8]}"[:128]


def run(params: dict[str, Any], ctx: JobContext, *, trainer: Trainer | None = None) -> dict[str, Any]:
    """Train, check and publish the SAE; returns ``{"result_ref", "sae_id", "metrics"}``."""
    model_dir = catalog_dir(ctx.zoo / "models", params["model_id"], "model")
    cohorts, volume_ids = params.get("cohorts") or [], params.get("volume_ids") or []
    if bool(cohorts) == bool(volume_ids):
        raise InvalidInput("give either 'cohorts' (zoo data) or 'volume_ids' (uploads), not both or neither.")
    saes = ctx.zoo / "saes"
    staging = fresh_dir(saes / f".staging-{ctx.job_id}")
    try:
        if cohorts:
            data_dir = train_data_dir(ctx.zoo)
            for c in cohorts:
                catalog_dir(data_dir, c, "cohort")
        else:
            data_dir = volumes_as_cases(ctx.data_dir, volume_ids, ctx.workdir / "cases" / "volumes").parent
            cohorts = ["volumes"]
        ctx.log(f"training {params['arch']} SAE on {model_dir.name} ({', '.join(cohorts)})")
        train = trainer or default_trainer()
        out = train(**_trainer_kwargs(train, params, model_dir, data_dir, cohorts, staging / "sae", ctx))
        if ctx.should_stop():
            raise JobStopped("stopped during training")
        sae_id = sae_id_for(params, ctx.job_id)
        card = _finish_card(staging / "sae", sae_id, params, ctx.job_id, out)
        publish_dir(staging / "sae", saes / sae_id)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(ctx.workdir / "cases", ignore_errors=True)
    ctx.log(f"published SAE {sae_id}")
    from medseglens_core.provenance import provenance

    prov = provenance(model_dir, saes / sae_id, zoo=ctx.zoo, device=ctx.device)
    return {
        "result_ref": f"/v1/saes/{sae_id}",
        "sae_id": sae_id,
        "metrics": card.get("metrics", {}),
        "provenance": prov,
    }


def _trainer_kwargs(
    train: Trainer,
    params: dict[str, Any],
    model_dir: Any,
    data_dir: Any,
    cohorts: list[str],
    out: Any,
    ctx: JobContext,
) -> dict[str, Any]:
    tokens, steps = params.get("tokens"), params.get("steps")
    accepted = inspect.signature(train).parameters
    kw: dict[str, Any] = {
        "model_dir": model_dir,
        "data_dir": data_dir,
        "cohorts": list(cohorts),
        "hook": params.get("hook"),
        "arch": params["arch"],
        "expansion": params["expansion"],
        "k": params["k"],
        "out": out,
        "token_budget": tokens if tokens is not None else int(steps or 0) * TOKENS_PER_STEP or None,
        "seed": params.get("seed", 0),
        "progress": ctx.progress,
        "should_stop": ctx.should_stop,
    }
    if "steps" in accepted and steps is not None:
        kw["steps"] = steps
        kw["token_budget"] = tokens
    if "device" in accepted:
        kw["device"] = ctx.device
    if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
        kw = {k: v for k, v in kw.items() if k in accepted}
    return kw


def _finish_card(sae_dir: Any, sae_id: str, params: dict[str, Any], job_id: str, out: Any) -> dict[str, Any]:
    missing = [f for f in REQUIRED_FILES if not (sae_dir / f).is_file()]
    if missing:
        raise InvalidInput(f"the trainer wrote no {', '.join(missing)} in {sae_dir}; the SAE is incomplete.")
    card_path = sae_dir / "card.json"
    card: dict[str, Any] = json.loads(card_path.read_text()) if card_path.is_file() else {}
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict):
        card.setdefault("metrics", out[1])  # (sae, metrics) from the trainer
    card.update({"id": sae_id, "model_id": params["model_id"], "job_id": job_id, "training": params})
    write_json(card_path, card)
    return card


register_task(JobKind.SAE_TRAINING.value, run)
