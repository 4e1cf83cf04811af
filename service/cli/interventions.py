"""CLI commands: interventions (``intervene``) and the failure-recovery benchmark (``recover``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from service.cli import app


@app.command("intervene")
def intervene(
    zoo: Annotated[Path, typer.Option("--zoo", help="Zoo folder with models/<id>/ and saes/<id>/.")],
    model: Annotated[str, typer.Option("--model", help="Model id under ZOO/models.")],
    sae: Annotated[str, typer.Option("--sae", help="SAE id under ZOO/saes (trained on --model).")],
    case: Annotated[Path, typer.Option("--case", help="Case folder (BraTS 2023 or 2021 file names).")],
    spec: Annotated[Path, typer.Option("--spec", help='Intervention spec JSON: {"edits": [...]}.')],
    out: Annotated[
        Path, typer.Option("--out", help="Output folder: baseline.nii.gz, edited.nii.gz, result.json.")
    ],
    mask: Annotated[
        Path | None, typer.Option("--mask", help="NIfTI mask on the case grid, for edits with scope 'mask'.")
    ] = None,
) -> None:
    """Apply an SAE latent intervention to one case and write baseline and edited segmentations."""
    import numpy as np

    from medseglens_core.data.preprocess import prepare_case
    from medseglens_core.interventions.apply import apply_spec
    from medseglens_core.interventions.cache import PrefixCache
    from medseglens_core.interventions.errors import InvalidSpec
    from medseglens_core.interventions.spec import parse_spec
    from medseglens_core.interventions.zoo import load_model_dir, load_sae_for
    from medseglens_core.io import load_case, write_label_map

    try:
        text = spec.read_text()
    except OSError as exc:
        raise InvalidSpec(f"cannot read the spec file {spec.name!r}: {exc.strerror}") from None
    parsed = parse_spec(text)
    net, _ = load_model_dir(zoo, model)
    sparse, sae_card = load_sae_for(zoo, model, sae)
    loaded = load_case(case)
    mask_arr = None
    if mask is not None:
        from medseglens_core.io import read_nifti

        vol = read_nifti(mask, name="mask")
        if not np.allclose(vol.affine, loaded.geometry.original_affine, atol=1e-3):
            raise InvalidSpec(
                "the --mask NIfTI is not on the case's grid (affine differs); resample it first"
            )
        mask_arr = loaded.geometry.to_ras(np.asarray(vol.data)) > 0
    prepared = prepare_case(loaded, net.cfg.input_size)
    cache = PrefixCache.build(net, prepared, sae_card.get("hook") or net.default_hook)
    result = apply_spec(
        cache, sparse, parsed, label=loaded.label, spacing=tuple(loaded.geometry.spacing), mask=mask_arr
    )
    out.mkdir(parents=True, exist_ok=True)
    write_label_map(result.baseline_labels, loaded.geometry, out / "baseline.nii.gz")
    write_label_map(result.edited_labels, loaded.geometry, out / "edited.nii.gz")
    doc = {"model_id": model, "sae_id": sae, "case_id": loaded.case_id, "spec": parsed.model_dump()}
    doc |= result.to_json()
    (out / "result.json").write_text(json.dumps(doc, indent=1))
    typer.echo(
        json.dumps(
            {
                "out": str(out),
                "changed_voxels": result.changed_voxels,
                "volume_change_ml": result.volume_change_ml,
                "dice_change": result.dice_change,
            },
            indent=1,
        )
    )


@app.command("recover")
def recover(
    zoo: Annotated[Path, typer.Option("--zoo", help="Zoo folder with models/<id>/ and saes/<id>/.")],
    data: Annotated[
        Path, typer.Option("--data", help="Folder with one sub-folder of case folders per cohort.")
    ],
    model: Annotated[
        str, typer.Option("--model", help="Model id under ZOO/models (its SAE is found by card).")
    ],
    target: Annotated[str, typer.Option("--target", help="Target cohort: a sub-folder of --data.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder for recovery.json and recovery.html.")],
    protocol: Annotated[
        str, typer.Option("--protocol", help="oracle, blind, blind-unlabelled, a comma list, or all.")
    ] = "oracle",
    region: Annotated[
        str, typer.Option("--region", help="Region scored: SNFH (default), WT, TC, ET, NCR.")
    ] = "SNFH",
    threshold: Annotated[
        float, typer.Option("--threshold", min=0.0, max=1.0, help="Failure Dice threshold.")
    ] = 0.5,
    sae: Annotated[str | None, typer.Option("--sae", help="SAE id (default: the model's main SAE).")] = None,
    gate_sae: Annotated[
        str | None,
        typer.Option(
            "--gate-sae",
            help="SAE (of the same model, any hook) whose latents the blind protocols' population "
            "gate reads (default: the model's SAE whose card has role 'gate', else --sae).",
        ),
    ] = None,
    source_calibration: Annotated[
        Path | None,
        typer.Option(
            "--source-calibration",
            help="Source-cohort case folders on which blind protocols check harm and fit their gate "
            "(default: ZOO/data/val/<source> and ZOO/data/test/<source>, cases the model never "
            "trained on), besides the first half of DATA/<source>.",
        ),
    ] = None,
) -> None:
    """Failure-recovery benchmark: find target cases the model fails on and repair them by steering latents."""
    from medseglens_core.errors import InvalidInput
    from medseglens_core.interventions.recovery import PROTOCOLS, RecoveryConfig, run_recovery
    from medseglens_core.interventions.report import write_recovery
    from medseglens_core.interventions.spec import RegionName
    from medseglens_core.interventions.zoo import (
        cohort_cases,
        load_gate_sae,
        load_items,
        load_model_dir,
        load_sae_for,
        source_cohort,
    )

    protocols = (
        list(PROTOCOLS) if protocol == "all" else [p.strip() for p in protocol.split(",") if p.strip()]
    )
    bad = [p for p in protocols if p not in PROTOCOLS]
    if bad or not protocols:
        raise InvalidInput(f"unknown protocol {bad or protocol!r}; choose from {list(PROTOCOLS)} or 'all'")
    if region not in RegionName.__args__:  # type: ignore[attr-defined]
        raise InvalidInput(f"unknown region {region!r}; choose one of {list(RegionName.__args__)}")  # type: ignore[attr-defined]
    net, card = load_model_dir(zoo, model)
    sparse, sae_card = load_sae_for(zoo, model, sae)
    gate_sparse, gate_hook, gate_id = load_gate_sae(zoo, model, gate_sae)
    source = source_cohort(card)
    if source == target:
        raise InvalidInput(f"target {target!r} is the model's training cohort; pick another cohort")
    src_paths, tgt_paths = cohort_cases(data, source), cohort_cases(data, target)
    cfg = RecoveryConfig(region=region, threshold=threshold)
    blind = [p for p in protocols if p != "oracle"]
    if blind and len(tgt_paths) <= cfg.calib_n:  # fail before loading anything
        raise InvalidInput(
            f"{blind[0]} needs more than {cfg.calib_n} target cases (calibration + held-out); got {len(tgt_paths)}"
        )

    def progress(event: dict) -> None:
        typer.echo("  " + " ".join(f"{k}={v}" for k, v in event.items()), err=True)

    hook = sae_card.get("hook") or net.default_hook
    src_items = load_items(net, hook, src_paths, source, progress=progress)
    tgt_items = load_items(net, hook, tgt_paths, target, progress=progress)
    harm_items = None
    harm_dirs = (
        [source_calibration]
        if source_calibration
        else [Path(zoo) / "data" / split / source for split in ("val", "test")]
    )
    if any(p != "oracle" for p in protocols):
        from medseglens_core.io import find_cases

        taken = {p.name for p in src_paths}
        harm_paths = [p for d in harm_dirs if d.is_dir() for p in find_cases(d) if p.name not in taken]
        harm_items = load_items(net, hook, harm_paths, source, progress=progress) or None
    docs = []
    for p in protocols:
        doc = run_recovery(
            sparse,
            src_items,
            tgt_items,
            p,
            model_id=model,
            source=source,
            target=target,
            config=cfg,
            harm_items=harm_items,
            progress=progress,
            gate_sae=gate_sparse,
            gate_hook=gate_hook,
        )
        doc["sae_id"] = sae_card.get("id", sae)
        doc["gate_sae_id"] = gate_id
        docs.append(doc)
    write_recovery(docs, out)
    keys = (
        "protocol",
        "n_cases",
        "n_failures",
        "recovered_fraction",
        "dice_before",
        "dice_after",
        "source_dice_change",
    )
    typer.echo(json.dumps([{k: d[k] for k in keys} for d in docs], indent=1))
