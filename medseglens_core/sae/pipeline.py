"""End to end: collect activations of a stored model, train an SAE, evaluate it, store it.

:func:`train_sae_for_model` is what ``medseglens train-sae``, ``zoo build`` and the job workers
call. Arguments are paths and plain values (JSON-serialisable), never objects.

Case split: for each cohort, cases come from ``data_dir/<cohort>/train`` (training tokens) and
``data_dir/<cohort>/val`` (held-out tokens and splice fidelity). Without those subfolders the
cases under ``data_dir/<cohort>`` are split in order: the last ``max(1, 20%)`` are held out.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medseglens_core.determinism import TRAIN_THREADS, deterministic
from medseglens_core.errors import NotFound
from medseglens_core.sae.base import SAEConfig
from medseglens_core.sae.collect import collect_activations
from medseglens_core.sae.fidelity import splice_fidelity
from medseglens_core.sae.io import save_sae
from medseglens_core.sae.train import resolve_device, train_sae

__all__ = ["split_cases", "train_sae_for_model"]

Progress = Callable[[dict[str, Any]], None]


def split_cases(
    data_dir: str | Path, cohorts: Sequence[str]
) -> tuple[list[tuple[Path, str]], list[tuple[Path, str]]]:
    """``(train, held_out)`` lists of ``(case_dir, cohort)`` (see module doc for the rule)."""
    from medseglens_core.io import find_cases

    train: list[tuple[Path, str]] = []
    held: list[tuple[Path, str]] = []
    root = Path(data_dir)
    for cohort in cohorts:
        base = root / cohort
        if not base.is_dir():
            raise NotFound(
                f"no folder for cohort {cohort!r} under the data directory; generate or copy it first"
            )
        if (base / "train").is_dir():
            tr = find_cases(base / "train")
            va = find_cases(base / "val") if (base / "val").is_dir() else []
        else:
            cases = find_cases(base)
            n_val = max(1, len(cases) // 5) if len(cases) > 1 else 0
            tr, va = cases[: len(cases) - n_val], cases[len(cases) - n_val :]
        if not tr:
            raise NotFound(f"cohort {cohort!r} has no training cases under the data directory")
        train += [(p, cohort) for p in tr]
        held += [(p, cohort) for p in va]
    return train, held


def train_sae_for_model(
    model_dir: str | Path,
    data_dir: str | Path,
    cohorts: Sequence[str],
    hook: str | None,
    arch: str,
    expansion: int,
    k: int,
    out: str | Path,
    token_budget: int | None = 2_000_000,
    seed: int = 0,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    *,
    device: str = "auto",
    steps: int | None = None,
    background_keep: float = 0.5,
    fidelity_cases: int = 8,
    sae_id: str | None = None,
    card_extra: dict[str, Any] | None = None,
    threads: int | None = TRAIN_THREADS,
) -> dict[str, Any]:
    """Collect, train, evaluate and save one SAE; returns the card written to ``out/card.json``.

    Args:
        model_dir: ``ZOO/models/<id>`` (weights + card). hook: hook point (None: the model's default).
        data_dir: folder with one sub-folder per cohort. cohorts: cohort names to pool.
        arch, expansion, k: SAE architecture, ``d_sae = expansion * d_in``, active latents.
        out: the SAE directory to write (``ZOO/saes/<id>``).
        token_budget / steps: training length (steps wins). seed: everything random.
        progress: called with ``{"phase": "collect"|"train"|"evaluate", ...}``.
        should_stop: polled during collection and training (cancellation).
        background_keep: fraction of background tokens kept at collection.
        fidelity_cases: at most this many held-out cases are used for splice fidelity.
        threads: torch CPU threads for the whole run (None: leave as is). Collection, training
            and evaluation run inside :func:`~medseglens_core.determinism.deterministic`, so the
            same arguments give a byte-identical ``sae_weights.safetensors`` on the same machine
            kind; the training length is ``token_budget // batch_size`` steps (or ``steps``).
    """
    from medseglens_core.models.card import load_model

    with deterministic(threads):
        dev = resolve_device(device)
        model, mcard = load_model(model_dir, device=dev)
        hook = hook or model.default_hook
        train_cases, held_cases = split_cases(data_dir, cohorts)
        emit = (lambda phase: lambda d: progress({"phase": phase, **d})) if progress else (lambda phase: None)
        model_id = str(mcard.get("id", Path(model_dir).name))
        with tempfile.TemporaryDirectory(prefix="medseglens-acts-") as tmp:
            common = dict(
                background_keep=background_keep, seed=seed, model_id=model_id, should_stop=should_stop
            )
            shards = collect_activations(
                model,
                hook,
                [p for p, _ in train_cases],
                Path(tmp) / "train",
                cohorts=[c for _, c in train_cases],
                progress=emit("collect"),
                **common,
            )
            eval_shards = None
            if held_cases:
                eval_shards = collect_activations(
                    model,
                    hook,
                    [p for p, _ in held_cases],
                    Path(tmp) / "val",
                    cohorts=[c for _, c in held_cases],
                    **common,
                )
            cfg = SAEConfig(arch=arch, d_in=shards.d_in, d_sae=expansion * shards.d_in, k=k, seed=seed)
            sae, metrics = train_sae(
                cfg,
                shards,
                eval_shards=eval_shards,
                token_budget=token_budget,
                steps=steps,
                device=dev,
                progress=emit("train"),
                should_stop=should_stop,
            )
            n_tokens = shards.n_tokens
        fid_cases = held_cases[:fidelity_cases] if held_cases else train_cases[:fidelity_cases]
        if progress:
            progress({"phase": "evaluate", "cases": len(fid_cases)})
        fid = splice_fidelity(model, sae, hook, [p for p, _ in fid_cases], cohorts=[c for _, c in fid_cases])
        metrics["fidelity"] = {
            key: fid[key] for key in ("n_cases", "splice_vs_original", "gt_original", "gt_spliced")
        }
        metrics["fidelity"]["on"] = "held_out" if held_cases else "train"
        card = {
            "id": sae_id or Path(out).name,
            "model_id": model_id,
            "model_architecture": model.arch,
            "hook": hook,
            "cohorts": list(cohorts),
            "case_ids": [p.name for p, _ in train_cases],
            "held_out_case_ids": [p.name for p, _ in held_cases],
            "expansion": expansion,
            "background_keep": background_keep,
            "collected_tokens": n_tokens,
            "seed": seed,
            "token_budget": token_budget,
            "threads": threads,
            "metrics": metrics,
            **(card_extra or {}),
        }
        return save_sae(sae.cpu(), out, card)
