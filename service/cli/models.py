"""CLI commands: models (train-model, segment)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from service.cli import app


@app.command("train-model")
def train_model_cmd(
    arch: Annotated[str, typer.Option(help="Architecture: segformer or unet.")],
    data: Annotated[
        Path,
        typer.Option(help="Folder with one sub-folder per cohort (train/ and val/ inside, or case folders)."),
    ],
    out: Annotated[Path, typer.Option(help="Output model folder, e.g. ZOO/models/unet-adult.")],
    cohorts: Annotated[str, typer.Option(help="Comma-separated training cohorts.")] = "adult",
    steps: Annotated[
        int, typer.Option(min=1, help="Optimiser steps: the training budget (and the LR schedule's length).")
    ] = 1500,
    time_budget: Annotated[
        float | None,
        typer.Option(help="Wall-clock safety limit in seconds: past it the run aborts, saving nothing."),
    ] = None,
    input_size: Annotated[
        int | None, typer.Option(help="Square slice size in pixels (default per architecture).")
    ] = None,
    variant: Annotated[str | None, typer.Option(help="SegFormer variant: b0, b1 or b2.")] = None,
    batch_size: Annotated[int, typer.Option(help="Slices per step.")] = 16,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 2e-3,
    val_every: Annotated[int, typer.Option(help="Steps between validations.")] = 100,
    seed: Annotated[
        int, typer.Option(help="Random seed (same seed, steps and threads: byte-identical weights).")
    ] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    threads: Annotated[
        int, typer.Option(min=1, help="CPU threads for torch; the weights' bits depend on it.")
    ] = 1,
    model_id: Annotated[
        str | None, typer.Option("--id", help="Model id (default: the output folder's name).")
    ] = None,
) -> None:
    """Train a segmentation model on case folders and write weights.safetensors + card.json."""
    from medseglens_core.models.train import TrainConfig, train_model

    model_cfg: dict = {}
    if input_size is not None:
        model_cfg["input_size"] = input_size
    if variant is not None:
        model_cfg["variant"] = variant
    cfg = TrainConfig(
        arch=arch,
        model=model_cfg,
        steps=steps,
        time_budget_s=time_budget,
        batch_size=batch_size,
        lr=lr,
        val_every=val_every,
        seed=seed,
        device=device,
        num_threads=threads,
    )
    names = [c.strip() for c in cohorts.split(",") if c.strip()]
    card = train_model(cfg, data, names, out, model_id=model_id, progress_bar=True)
    summary = {"id": card["id"], "out": str(out), "weights_sha256": card["weights_sha256"]}
    typer.echo(json.dumps(summary | {"validation_dice": card["validation_dice"]}, indent=2))


@app.command("segment")
def segment_cmd(
    model: Annotated[Path, typer.Option(help="Model folder (weights.safetensors + card.json).")],
    case: Annotated[Path, typer.Option(help="Case folder (BraTS 2023 or 2021 file names).")],
    out: Annotated[Path, typer.Option(help="Output label map, e.g. seg.nii.gz (input grid and affine).")],
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    batch_size: Annotated[int, typer.Option(help="Slices per forward call.")] = 16,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Segment one case; print region volumes (mL) and, with a label map, Dice and HD95 per region."""
    from medseglens_core.io import load_case, write_label_map
    from medseglens_core.metrics import region_volumes_ml, score_segmentation
    from medseglens_core.models.card import load_model
    from medseglens_core.models.inference import segment_case

    net, card = load_model(model)
    loaded = load_case(case)
    seg = segment_case(net, loaded, device=device, batch_size=batch_size)
    write_label_map(seg.labels, loaded.geometry, out)
    spacing = loaded.geometry.spacing
    report: dict = {
        "model": card.get("id"),
        "case_id": loaded.case_id,
        "out": str(out),
        "volumes_ml": region_volumes_ml(seg.labels, spacing),
    }
    if loaded.label is not None:
        report["scores"] = score_segmentation(seg.labels, loaded.label, spacing)
    if as_json:
        typer.echo(json.dumps(report))
        return
    typer.echo(f"case {loaded.case_id}: wrote {out}")
    for name, ml in report["volumes_ml"].items():
        typer.echo(f"  {name:5s} {ml:9.2f} mL")
    if "scores" in report:
        for group in ("regions", "labels"):
            for name, s in report["scores"][group].items():
                typer.echo(f"  {group[:-1]} {name:5s} Dice {s['dice']:.3f}  HD95 {s['hd95']:.1f} mm")
