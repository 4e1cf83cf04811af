"""CLI commands: data (``synth``: write a synthetic cohort; ``montage``: picture of cohorts)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from service.cli import app


def _parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["snr=20", "head_scale=[0.9,1.0]"]`` -> ``{"snr": 20, "head_scale": [0.9, 1.0]}`` (JSON values,
    falling back to the raw string)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {item!r}", param_hint="--set")
        try:
            out[key.strip()] = json.loads(raw)
        except json.JSONDecodeError:
            out[key.strip()] = raw
    return out


@app.command("synth")
def synth(
    out: Annotated[Path, typer.Option(help="Output folder: <out>/<case_id>/... and <out>/dataset.json.")],
    cohort: Annotated[str, typer.Option(help="Preset: adult, pediatric, ssa or healthy.")] = "adult",
    n: Annotated[int, typer.Option(min=1, help="Number of cases.")] = 10,
    seed: Annotated[
        int, typer.Option(min=0, help="Cohort seed (case i uses a seed derived from seed, i, cohort).")
    ] = 0,
    resolution: Annotated[int, typer.Option(min=1, max=2, help="Output grid spacing in mm: 1 or 2.")] = 2,
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a cohort parameter, KEY=JSON (e.g. snr=20); repeatable."),
    ] = None,
) -> None:
    """Write a synthetic BraTS-2023-style cohort built on MNI152 anatomy (no download)."""
    from tqdm import tqdm

    from medseglens_core.data.synthetic import get_cohort, write_cohort

    overrides = _parse_overrides(set_ or [])
    params = get_cohort(cohort, overrides)  # fails fast, before any file is written
    with tqdm(total=n, unit="case", desc=f"synth {cohort}", file=sys.stderr) as bar:
        folders = write_cohort(
            out, params, n, seed=seed, resolution=resolution, progress=lambda _: bar.update(1)
        )
    typer.echo(f"wrote {len(folders)} {cohort} cases and dataset.json to {out}")


@app.command("montage")
def montage(
    data: Annotated[
        Path, typer.Option(help="One sub-folder per cohort, or case folders with a dataset.json.")
    ],
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("montage.png"),
) -> None:
    """Draw per cohort one row: T1n, T1c, T2w, T2-FLAIR and the labels on one axial slice through the tumour."""
    from medseglens_core.reports.montage import make_montage

    path = make_montage(data, out)
    typer.echo(f"wrote {path}")


def _shift_kinds_help() -> str:
    from medseglens_core.data.shifts import SHIFTS

    return "Acquisition shift: " + ", ".join(SHIFTS) + "."


@app.command("shift")
def shift(
    kind: Annotated[str, typer.Option(help=_shift_kinds_help())],
    src: Annotated[Path, typer.Option(help="Folder of BraTS-2023 case folders (e.g. a synth output).")],
    out: Annotated[Path, typer.Option(help="New output folder: <out>/<case_id>/..., <out>/shift.json.")],
    seed: Annotated[int, typer.Option(min=0, help="Seed (each case's noise depends on seed, kind, id).")] = 0,
    severity: Annotated[float, typer.Option(help="Strength in (0, 1]; 1 is the strongest.")] = 1.0,
) -> None:
    """Apply an acquisition shift to every case under SRC (labels untouched); write them to OUT.

    The kinds are described in ``medseglens_core/data/shifts.py``; nothing is written on error."""
    from medseglens_core.data.shifts import shift_folder

    ids = shift_folder(kind, src, out, severity=severity, seed=seed)
    typer.echo(
        json.dumps({"kind": kind, "severity": severity, "seed": seed, "cases": len(ids), "out": str(out)})
    )
