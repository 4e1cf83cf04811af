"""CLI commands: ``medseglens zoo build``, ``medseglens zoo results``."""

from __future__ import annotations

import time
from enum import StrEnum
from pathlib import Path

import typer

from service.cli import app

zoo_app = typer.Typer(help="The demo model zoo: synthetic cohorts, both models, their SAEs, the diff report.")
app.add_typer(zoo_app, name="zoo")


@zoo_app.command("build")
def build(
    out: Path = typer.Option(
        ..., "--out", help="Zoo directory to create or finish (steps already done are skipped)."
    ),
    seed: int = typer.Option(0, help="Base seed of the synthetic cohorts and the training runs."),
    resolution: int = typer.Option(
        2, min=1, max=2, help="Voxel size of the synthetic volumes in mm (1 or 2)."
    ),
) -> None:
    """Generate the four synthetic cohorts, train SegFormer-b0 and U-Net on adult, an SAE per model,
    and the zoo's diff report. About 10 minutes on 2 CPU cores at 2 mm."""
    from medseglens_core.zoo import ZooConfig, build_zoo

    t0 = time.perf_counter()

    def say(msg: str) -> None:
        typer.echo(f"[{time.perf_counter() - t0:6.1f}s] {msg}", err=True)

    summary = build_zoo(out, ZooConfig(seed=seed, resolution=resolution), progress=say)
    typer.echo(f"zoo built at {out} in {sum(summary['timings_s'].values()):.0f}s: {summary['timings_s']}")


class ResultsFormat(StrEnum):
    markdown = "markdown"
    json = "json"


@zoo_app.command("results")
def results(
    zoo: Path = typer.Option(..., "--zoo", help="A built zoo directory."),
    fmt: ResultsFormat = typer.Option(
        ResultsFormat.markdown, "--format", help="markdown (the README's tables) or json."
    ),
    recovery: list[Path] = typer.Option(
        [], "--recovery", help="Extra recovery.json files (repeatable); the zoo's own are always read."
    ),
    suite: list[Path] = typer.Option(
        [],
        "--suite",
        help="suite.json files of medseglens recover-suite (repeatable): one table row per model and shift.",
    ),
) -> None:
    """Print the result tables (Dice per cohort, SAE metrics, diff counts, recovery, OOD, and any
    leave-one-shift-out suite given) from the zoo's cards and reports; nothing is recomputed."""
    import json

    from medseglens_core.analysis.results import results_markdown, zoo_results

    doc = zoo_results(zoo, recovery, suite)
    as_json = fmt == ResultsFormat.json
    typer.echo(json.dumps(doc, indent=2) if as_json else results_markdown(doc), nl=as_json)
