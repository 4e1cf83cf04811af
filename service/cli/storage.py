"""CLI command: ``medseglens storage check`` (database rows whose files are missing on disk)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from service.cli import app

storage_app = typer.Typer(
    help="The service's data directory and the rows that point into it.", no_args_is_help=True
)
app.add_typer(storage_app, name="storage")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


@storage_app.command("check")
def check(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON document.")] = False,
    limit: Annotated[
        int | None, typer.Option(min=1, help="Check at most this many rows (default: every row).")
    ] = None,
) -> None:
    """List rows (volumes, segmentations, interventions, diff reports, job results) whose files are gone.

    Reads MEDSEGLENS_DATABASE_URL, MEDSEGLENS_DATA_DIR and MEDSEGLENS_ZOO as the server does and
    changes nothing: no table, folder or file is made or removed. Exit status 0 when every row's
    files are there, 1 when some are missing, 2 when the database cannot be read. Such rows answer
    410 artefact-gone on their artefact routes; delete them or make the results again.
    """
    from sqlalchemy import inspect
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from service.config import Settings
    from service.db import make_engine, make_sessionmaker
    from service.storage import Storage
    from service.storage_check import find_dangling

    settings = Settings()
    url = make_url(settings.database_url)
    if url.get_backend_name() == "sqlite" and url.database and not Path(url.database).is_file():
        _fail(f"no database at {url.database}; set MEDSEGLENS_DATABASE_URL or MEDSEGLENS_DATA_DIR")
    engine = make_engine(settings.database_url)
    try:
        if not inspect(engine).has_table("volumes"):
            _fail(
                "the database has no MedSegLens tables; start the server once or check MEDSEGLENS_DATABASE_URL"
            )
        with make_sessionmaker(engine)() as session:
            report = find_dangling(session, Storage(settings.data_dir), settings.zoo_dir, limit=limit)
    except SQLAlchemyError as exc:
        _fail(f"cannot read the database ({type(exc).__name__}: {str(exc).splitlines()[0]})")
    finally:
        engine.dispose()
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
    else:
        for row in report.dangling:
            typer.echo(f"{row.kind} {row.id} (project {row.project_id}): missing {', '.join(row.missing)}")
        kinds = ", ".join(f"{kind} {n}" for kind, n in report.by_kind.items() if n)
        more = f" (stopped after {limit} rows; more exist)" if report.truncated else ""
        typer.echo(
            f"{sum(report.checked.values())} rows checked{more}, {len(report.dangling)} dangling"
            + (f": {kinds}" if kinds else "")
        )
    if report.dangling:
        raise typer.Exit(1)
