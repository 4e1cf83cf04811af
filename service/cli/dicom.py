"""CLI commands: ``dicom from-nifti`` (a BraTS NIfTI case -> one DICOM MR study, four series)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from service.cli import app

dicom_app = typer.Typer(help="DICOM: write demo studies from NIfTI cases.", no_args_is_help=True)
app.add_typer(dicom_app, name="dicom")


@dicom_app.command("from-nifti")
def from_nifti(
    case: Annotated[Path, typer.Option(help="A BraTS case folder (<id>-t1n.nii.gz ... <id>-t2f.nii.gz).")],
    out: Annotated[Path, typer.Option(help="Output folder: <out>/NN-<modality>/NNNN.dcm.")],
    reverse: Annotated[
        bool, typer.Option(help="Number files/InstanceNumber from the last slice down (tests ordering).")
    ] = False,
) -> None:
    """Write one DICOM study (four MR series, synthetic patient, UIDs derived from the case id)."""
    from medseglens_core.io import read_nifti
    from medseglens_core.io.dicom import write_study
    from medseglens_core.io.loaders import _detect

    if not case.is_dir():
        raise typer.BadParameter(f"{case} is not a folder", param_hint="--case")
    _, case_id, files = _detect(case)
    volumes = {}
    for modality in ("t1n", "t1c", "t2w", "t2f"):
        vol = read_nifti(files[modality], name=modality)
        volumes[modality] = (vol.data, vol.affine)
    info = write_study(volumes, out, case_id=case_id, reverse_files=reverse)
    n = sum(info["series"].values())
    typer.echo(f"wrote study {info['study_instance_uid']}: {len(info['series'])} series, {n} files to {out}")
