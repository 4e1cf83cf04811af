"""CLI commands: sae (train-sae)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from service.cli import app


@app.command("train-sae")
def train_sae_cmd(
    model: Annotated[Path, typer.Option(help="Model folder, e.g. ZOO/models/unet-adult.")],
    data: Annotated[
        Path, typer.Option(help="Folder with one sub-folder per cohort (train/ and val/ inside).")
    ],
    out: Annotated[Path, typer.Option(help="Output SAE folder, e.g. ZOO/saes/unet-adult-bottleneck.")],
    hook: Annotated[str | None, typer.Option(help="Hook point (default: the model's default hook).")] = None,
    cohorts: Annotated[str, typer.Option(help="Comma-separated cohorts to pool tokens from.")] = (
        "adult,pediatric,ssa,healthy"
    ),
    arch: Annotated[str, typer.Option(help="SAE architecture: batchtopk, topk or relu.")] = "batchtopk",
    expansion: Annotated[int, typer.Option(help="d_sae = expansion * d_in.")] = 8,
    k: Annotated[int, typer.Option(help="Active latents per token (mean for BatchTopK).")] = 32,
    tokens: Annotated[
        int,
        typer.Option(
            min=1,
            help="Training token budget: tokens // batch size steps (1M under-trains: EV 0.85 vs 0.92 at 2M).",
        ),
    ] = 2_000_000,
    steps: Annotated[int | None, typer.Option(help="Training steps (overrides --tokens).")] = None,
    background_keep: Annotated[float, typer.Option(help="Fraction of background tokens kept.")] = 0.5,
    seed: Annotated[
        int, typer.Option(help="Random seed (same seed, tokens and threads: byte-identical weights).")
    ] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    threads: Annotated[
        int, typer.Option(min=1, help="CPU threads for torch; the weights' bits depend on it.")
    ] = 1,
    progress: Annotated[bool, typer.Option(help="Print progress lines on stderr.")] = True,
) -> None:
    """Collect activations at a hook, train an SAE, evaluate it (tokens + splice Dice) and save it."""
    from medseglens_core.sae.pipeline import train_sae_for_model

    def report(info: dict) -> None:
        if info.get("phase") == "train":
            typer.echo(
                f"train step {info['step']}/{info['total_steps']} loss {info['loss']:.4g} "
                f"ev {info['explained_variance']:.3f} l0 {info['l0']:.1f} dead {info['dead_fraction']:.1%} "
                f"{info['tokens_per_s']:.0f} tok/s",
                err=True,
            )
        else:
            typer.echo(" ".join(f"{k}={v}" for k, v in info.items()), err=True)

    card = train_sae_for_model(
        model,
        data,
        [c.strip() for c in cohorts.split(",") if c.strip()],
        hook,
        arch,
        expansion,
        k,
        out,
        token_budget=tokens,
        seed=seed,
        progress=report if progress else None,
        device=device,
        steps=steps,
        background_keep=background_keep,
        threads=threads,
    )
    summary = {"id": card["id"], "hook": card["hook"], "weights_sha256": card["weights_sha256"]}
    typer.echo(json.dumps(summary | {"metrics": card["metrics"]}, indent=2))
