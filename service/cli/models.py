"""CLI commands: models (train-model, segment)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from service.cli import app

PRECISION_HELP = (
    "Network precision: fp32, bf16 (autocast, CPU or CUDA) or fp16 (CUDA only); SAE codes stay float32."
)


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
    precision: Annotated[str, typer.Option(help=PRECISION_HELP)] = "fp32",
    batch_size: Annotated[int, typer.Option(help="Slices per forward call.")] = 16,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    zoo: Annotated[
        Path | None,
        typer.Option(
            help="Zoo the model belongs to, for the OOD flag's calibration and its main SAE; "
            "default: the model folder's zoo (MODEL/../..) when it is one."
        ),
    ] = None,
) -> None:
    """Segment one case; print region volumes (mL), Dice and HD95 per region with a label map,
    the out-of-distribution flag (``ood``) and the weights' ``provenance``."""
    from medseglens_core.io import load_case, write_label_map
    from medseglens_core.metrics import region_volumes_ml, score_segmentation
    from medseglens_core.models.base import check_precision
    from medseglens_core.models.card import load_model
    from medseglens_core.models.inference import resolve_device, segment_case

    check_precision(precision, resolve_device(device))
    net, card = load_model(model)
    net.set_precision(precision)
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
    report["ood"], report["provenance"] = _trust_blocks(net, card, model, loaded, zoo, str(seg_device(net)))
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
    ood = report["ood"]
    if ood["flagged"]:
        typer.echo("  OUT OF DISTRIBUTION: " + "; ".join(ood["reasons"]))
    elif not ood["calibrated"]:
        typer.echo(f"  ood: not calibrated ({ood.get('note', 'no zoo')})")


def seg_device(net: Any) -> Any:
    """The device of the network's weights."""
    return next(net.parameters()).device


def _trust_blocks(
    net: Any, card: dict[str, Any], model_dir: Path, case: Any, zoo: Path | None, device: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``ood`` (calibrated on ZOO's cases with the model's main SAE, cached like the service's) and
    ``provenance`` of one CLI segmentation."""
    from types import SimpleNamespace

    from medseglens_core.analysis.ood import assess, case_profile, uncalibrated
    from medseglens_core.data.preprocess import prepare_case
    from medseglens_core.provenance import provenance
    from service import trust
    from service.config import Settings

    if zoo is None and (model_dir.resolve().parent.parent / "saes").is_dir():
        zoo = model_dir.resolve().parent.parent
    prepared = prepare_case(case, net.cfg.input_size)
    sae_dir = None
    if zoo is None:
        block = assess(None, case_profile(net, None, None, prepared, case.geometry.spacing))
        block["note"] = uncalibrated("no zoo to calibrate against: pass --zoo")["note"]
        return block, provenance(model_dir, device=device, precision=net.precision, model_card=card)
    from medseglens_core.analysis.encode import resolve_hook
    from medseglens_core.analysis.zoo import discover_zoo
    from medseglens_core.sae.io import load_sae

    entry = {e.model_id: e for e in discover_zoo(zoo)}.get(str(card.get("id")))
    sae = None
    if entry is not None:
        sae_dir = entry.sae_dir
        obj, scard = load_sae(sae_dir)
        sae = SimpleNamespace(id=entry.sae_id, obj=obj.eval(), card=scard, path=sae_dir)
    model = SimpleNamespace(id=str(card.get("id")), obj=net, card=card, path=model_dir)
    cal = trust.calibration(SimpleNamespace(zoo=zoo), model, sae, Settings().data_dir)
    hook = resolve_hook(net, None, sae.card) if sae is not None else None
    block = assess(cal, case_profile(net, sae.obj if sae else None, hook, prepared, case.geometry.spacing))
    if cal.get("note"):
        block["note"] = cal["note"]
    return block, provenance(
        model_dir, sae_dir, zoo=zoo, device=device, precision=net.precision, model_card=card
    )
