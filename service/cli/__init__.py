"""The ``medseglens`` command line.

One Typer app; each area registers its commands from its own module so they stay small.
Heavy imports (torch, transformers) happen inside commands so ``--help`` is instant.
Errors from the core print as one line on stderr with exit status 2, never a traceback.
"""

from __future__ import annotations

import sys

import typer

from medseglens_core.errors import MedSegLensError

app = typer.Typer(
    name="medseglens",
    help="Med-SegLens: segment brain-tumour MRI, inspect SAE latents, diff models and intervene.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    # Each module adds its commands to ``app`` on import.
    from service.cli import analysis, data, interventions, models, sae, server, worker, zoo  # noqa: F401


def main() -> None:
    _register()
    try:
        app()
    except MedSegLensError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
