"""CLI commands: analysis (cross-dataset / cross-architecture diff report)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from service.cli import app


@app.command("diff")
def diff(
    zoo: Path = typer.Option(
        ..., "--zoo", help="Zoo folder with models/<id>/ and saes/<id>/ (card.json model_id)."
    ),
    data: Path = typer.Option(..., "--data", help="Folder with one sub-folder of case folders per cohort."),
    out: Path = typer.Option(..., "--out", help="Output folder for report.json and report.html."),
    source: str | None = typer.Option(
        None, "--source", help="Reference cohort (default: the models' training cohort)."
    ),
    max_cases: int = typer.Option(20, "--max-cases", min=2, help="Cases per cohort (first by folder name)."),
    regions: str = typer.Option(
        "SNFH", "--regions", help="Comma-separated regions for attribution (NCR,SNFH,ET)."
    ),
    n_perm: int = typer.Option(
        500, "--n-perm", min=1, help="Slice permutations for the cross-architecture null."
    ),
    max_slices: int = typer.Option(
        24, "--max-slices", min=0, help="Brain slices per case, evenly spaced (0: all)."
    ),
) -> None:
    """Write the cross-dataset diff report (shared vs population-specific latents) of every model in ZOO."""
    from medseglens_core.analysis.report import build_diff_report

    def progress(event: dict) -> None:
        typer.echo(
            f"  {event.get('stage')}: {event.get('cohort', '')} {event.get('case', '')}".rstrip(), err=True
        )

    report = build_diff_report(
        zoo,
        data,
        out,
        source=source,
        max_cases_per_cohort=max_cases,
        regions=tuple(r.strip() for r in regions.split(",") if r.strip()),
        n_perm=n_perm,
        max_slices_per_case=max_slices or None,
        progress=progress,
    )
    summary = {
        "out": str(out),
        "source_cohort": report["source_cohort"],
        "counts": {m: v["counts"] for m, v in report["models"].items()},
        "shared_backbone": {
            f"{x['model_a']}~{x['model_b']}": x["shared_fraction"] for x in report["crossarch"]
        },
        "timing_s": report["timing_s"],
    }
    typer.echo(json.dumps(summary, indent=1))
