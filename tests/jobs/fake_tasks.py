"""A test-only trainer behind the real ``sae_training`` task (imported by workers with ``--import``).

The real task's staging, atomic publish and card handling run unchanged; only the core trainer
is replaced by a loop of ``token_budget`` steps of ``MEDSEGLENS_TEST_STEP_S`` seconds each that
reports step/loss/explained variance/L0, honours ``should_stop`` and writes a tiny SAE.
``seed == 666`` makes it raise, to test failures.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from medseglens_core.errors import InvalidInput
from service.jobs.context import JobContext
from service.jobs.states import JobKind
from service.jobs.tasks import register_task, sae_training

D_IN = 4


def fake_trainer(
    model_dir: Path,
    data_dir: Path,
    cohorts: list[str],
    hook: str | None,
    arch: str,
    expansion: int,
    k: int,
    out: Path,
    token_budget: int | None,
    seed: int,
    progress: Any,
    should_stop: Any,
) -> dict[str, Any]:
    steps = int(token_budget or 10)
    step_s = float(os.environ.get("MEDSEGLENS_TEST_STEP_S", "0.05"))
    if seed == 666:
        raise InvalidInput("planted failure: seed 666")
    for step in range(1, steps + 1):
        if should_stop():
            return {}
        time.sleep(step_s)
        progress(
            {
                "step": step,
                "total_steps": steps,
                "loss": 1.0 / step,
                "explained_variance": 1 - 1.0 / step,
                "l0": k,
            }
        )
    out.mkdir(parents=True, exist_ok=True)
    d_sae = D_IN * expansion
    save_file(
        {
            "W_enc": np.zeros((D_IN, d_sae), np.float32),
            "W_dec": np.zeros((d_sae, D_IN), np.float32),
            "b_enc": np.zeros(d_sae, np.float32),
            "b_dec": np.zeros(D_IN, np.float32),
        },
        str(out / "sae_weights.safetensors"),
    )
    (out / "cfg.json").write_text(json.dumps({"d_in": D_IN, "d_sae": d_sae, "k": k, "architecture": arch}))
    (out / "card.json").write_text(json.dumps({"arch": arch, "metrics": {"explained_variance": 0.9}}))
    return {"explained_variance": 0.9}


def task(params: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    return sae_training.run(params, ctx, trainer=fake_trainer)


register_task(JobKind.SAE_TRAINING.value, task, replace=True)
