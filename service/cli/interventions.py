"""CLI commands: interventions (``intervene``) and the failure-recovery benchmark (``recover``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from service.cli import app
from service.cli.models import PRECISION_HELP


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
    precision: Annotated[str, typer.Option("--precision", help=PRECISION_HELP)] = "fp32",
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
    from medseglens_core.models.base import check_precision

    try:
        text = spec.read_text()
    except OSError as exc:
        raise InvalidSpec(f"cannot read the spec file {spec.name!r}: {exc.strerror}") from None
    parsed = parse_spec(text)
    net, _ = load_model_dir(zoo, model)
    net.set_precision(check_precision(precision, next(net.parameters()).device))
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
        str,
        typer.Option(
            "--protocol", help="oracle, blind, blind-unlabelled, diff, diff-unlabelled, a comma list, or all."
        ),
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
            help="Source-cohort case folders on which blind protocols check harm and fit their gate, "
            "every case of it (default: the first 14 of ZOO/data/val/<source> then "
            "ZOO/data/test/<source>, cases the model never trained on), besides the first half of "
            "DATA/<source>.",
        ),
    ] = None,
    diff_report: Annotated[
        Path | None,
        typer.Option(
            "--diff-report",
            help="Protocols diff, diff-unlabelled: the diff report.json whose target-specific latents they edit "
            "(default: ZOO/reports/zoo/report.json; must be computed with the same SAE).",
        ),
    ] = None,
) -> None:
    """Failure-recovery benchmark: find target cases the model fails on and repair them by steering latents."""
    from medseglens_core.interventions.pipeline import recover_from_zoo
    from medseglens_core.interventions.recovery import RecoveryConfig
    from medseglens_core.interventions.report import write_recovery

    def progress(event: dict) -> None:
        typer.echo("  " + " ".join(f"{k}={v}" for k, v in event.items()), err=True)

    docs = recover_from_zoo(
        zoo, data, model, target, protocol, config=RecoveryConfig(region=region, threshold=threshold),
        sae_id=sae, gate_sae_id=gate_sae, source_calibration=source_calibration, diff_report=diff_report,
        progress=progress,
    )  # fmt: skip
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
    rows = [{**{k: d[k] for k in keys}, "verdict": (d.get("verdict") or {}).get("summary")} for d in docs]
    typer.echo(json.dumps(rows, indent=1))


@app.command("recover-suite")
def recover_suite(
    zoo: Annotated[Path, typer.Option("--zoo", help="Zoo folder with models/<id>/ and saes/<id>/.")],
    out: Annotated[
        Path, typer.Option("--out", help="New output folder: suite.json, suite.html, runs/, data/.")
    ],
    model: Annotated[
        list[str] | None,
        typer.Option("--model", help="Model id (repeatable; default: every model with an SAE)."),
    ] = None,
    shift: Annotated[
        list[str] | None, typer.Option("--shift", help="Shift kind (repeatable; default: every kind).")
    ] = None,
    protocol: Annotated[
        str, typer.Option("--protocol", help="Comma list of protocols run per shift.")
    ] = "oracle,blind,diff",
    n_target: Annotated[
        int, typer.Option("--n-target", min=2, help="Shifted cases per shift (calibration + evaluated).")
    ] = 9,
    calib_n: Annotated[
        int, typer.Option("--calib-n", min=1, max=5, help="Labelled calibration cases per shift.")
    ] = 3,
    n_source: Annotated[int, typer.Option("--n-source", min=1, help="Unshifted source cases.")] = 4,
    n_diff: Annotated[
        int, typer.Option("--n-diff", min=3, help="Unlabelled shifted cases the diff reads.")
    ] = 6,
    seed: Annotated[
        int, typer.Option("--seed", min=0, help="Seed of the fresh cases and the shifts.")
    ] = 9100,
) -> None:
    """Leave-one-shift-out evaluation: per shift kind, fresh adult cases shifted, every protocol and baseline."""
    from medseglens_core.interventions.pipeline import parse_protocols
    from medseglens_core.interventions.suite import SuiteConfig, run_suite

    cfg = SuiteConfig(n_source=n_source, n_target=n_target, n_diff=n_diff, calib_n=calib_n, seed=seed,
                      protocols=tuple(parse_protocols(protocol)))  # fmt: skip

    def progress(event: dict) -> None:
        if event.get("stage") != "load":
            typer.echo("  " + " ".join(f"{k}={v}" for k, v in event.items()), err=True)

    doc = run_suite(zoo, out, models=model, kinds=shift, config=cfg, progress=progress)
    typer.echo(json.dumps(doc["summary"], indent=1))
