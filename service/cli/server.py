"""CLI commands of the service: ``serve``, ``projects create|list``, ``keys create|list|revoke``,
``audit export``, ``openapi``."""

from __future__ import annotations

import inspect
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from service.cli import app

keys_app = typer.Typer(
    help="Manage API keys (stored hashed; a key is shown once, when made).", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")
projects_app = typer.Typer(
    help="Manage projects (tenants: every key and its data belong to one).", no_args_is_help=True
)
app.add_typer(projects_app, name="projects")
audit_app = typer.Typer(help="Read the append-only audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _sessionmaker(settings: Any):  # noqa: ANN202 - sessionmaker[Session]
    from service.db import create_tables, make_engine, make_sessionmaker

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url)
    create_tables(engine)
    return make_sessionmaker(engine)


@projects_app.command("create")
def projects_create(
    name: Annotated[str, typer.Argument(help="Project name (letters, digits, _ . -).")],
) -> None:
    """Create a project; make its keys with `medseglens keys create --project NAME`."""
    from service.auth import create_project
    from service.config import get_settings
    from service.db import session_scope

    try:
        with session_scope(_sessionmaker(get_settings())) as session:
            row = create_project(session, name)
            typer.echo(f"created project {row.name} id={row.id}")
    except ValueError as exc:
        _fail(str(exc))


@projects_app.command("delete")
def projects_delete(name: Annotated[str, typer.Argument(help="Project name.")]) -> None:
    """Mark a project deleted: its keys are refused (401) from the next request on; its rows stay."""
    from service.auth import delete_project
    from service.config import get_settings
    from service.db import session_scope
    from service.errors import ResourceNotFound

    try:
        with session_scope(_sessionmaker(get_settings())) as session:
            delete_project(session, name)
    except ResourceNotFound as exc:
        _fail(exc.detail)
    except ValueError as exc:
        _fail(str(exc))
    typer.echo(f"deleted project {name}")


@projects_app.command("list")
def projects_list() -> None:
    """List projects: name, id, created, deleted."""
    from service.auth import list_projects
    from service.config import get_settings
    from service.db import session_scope

    with session_scope(_sessionmaker(get_settings())) as session:
        for row in list_projects(session):
            deleted = row.deleted.isoformat() if row.deleted else "-"
            typer.echo(f"{row.name}  {row.id}  created={row.created.isoformat()}  deleted={deleted}")


@keys_app.command("create")
def keys_create(
    scopes: Annotated[
        str,
        typer.Option(help="Comma-separated: read,segment,intervene,train,admin (superuser: every project)."),
    ] = "read",
    name: Annotated[str, typer.Option(help="A label for people (who or what uses the key).")] = "key",
    project: Annotated[
        str, typer.Option(help="The project the key (and what it makes) belongs to.")
    ] = "default",
    expires: Annotated[
        str | None, typer.Option(help="Lifetime, e.g. 30d, 12h, 90m, 2w (default: none).")
    ] = None,
) -> None:
    """Create an API key; the last line of output is the key itself (shown only this once)."""
    from service.auth import create_key, parse_duration, parse_scopes
    from service.config import get_settings
    from service.db import session_scope
    from service.errors import ResourceNotFound
    from service.models_db import utcnow

    try:
        parse_scopes(scopes)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--scopes") from exc
    try:
        until = utcnow() + parse_duration(expires) if expires else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--expires") from exc
    try:
        with session_scope(_sessionmaker(get_settings())) as session:
            row, plain = create_key(session, name, scopes, project=project, expires=until)
            typer.echo(
                f"created key id={row.id} name={row.name} project={project} scopes={','.join(row.scopes)}"
                f" expires={until.isoformat() if until else '-'}"
            )
    except ResourceNotFound as exc:
        _fail(exc.detail)
    typer.echo(plain)


@keys_app.command("list")
def keys_list() -> None:
    """List API keys: id, prefix, name, project, scopes, created, expires, last used, revoked (never the key)."""
    from service.auth import list_keys, list_projects
    from service.config import get_settings
    from service.db import session_scope

    def when(t: Any) -> str:
        return t.isoformat() if t else "-"

    with session_scope(_sessionmaker(get_settings())) as session:
        names = {p.id: p.name for p in list_projects(session)}
        for row in list_keys(session):
            typer.echo(
                f"{row.id}  {row.prefix}...  {row.name}  project={names.get(row.project_id, '?')}  "
                f"{','.join(row.scopes)}  created={when(row.created)}  expires={when(row.expires)}  "
                f"last_used={when(row.last_used)}  revoked={when(row.revoked)}"
            )


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (from `keys list`).")]) -> None:
    """Revoke an API key; requests with it get 401 from then on."""
    from service.auth import revoke_key
    from service.config import get_settings
    from service.db import session_scope

    with session_scope(_sessionmaker(get_settings())) as session:
        if not revoke_key(session, key_id):
            typer.echo(f"error: no key with id {key_id}; see `medseglens keys list`.", err=True)
            raise typer.Exit(2)
    typer.echo(f"revoked {key_id}")


@audit_app.command("export")
def audit_export(
    since: Annotated[
        str | None, typer.Option(help="ISO time (2026-01-31T00:00:00Z) or a duration back (7d).")
    ] = None,
    until: Annotated[str | None, typer.Option(help="ISO time or a duration back; default now.")] = None,
    project: Annotated[str | None, typer.Option(help="Only this project's rows.")] = None,
    resource: Annotated[
        str | None, typer.Option(help="Only this resource (volumes, segmentations, jobs...).")
    ] = None,
) -> None:
    """Print audit rows oldest first as JSON lines (never a key, only its id)."""
    from service.audit import iter_events, parse_when
    from service.config import get_settings
    from service.db import session_scope

    try:
        lo = parse_when(since) if since else None
        hi = parse_when(until) if until else None
    except ValueError as exc:
        _fail(str(exc))
    if lo is not None and hi is not None and lo > hi:
        _fail(f"--since {since} is after --until {until}.")
    with session_scope(_sessionmaker(get_settings())) as session:
        for event in iter_events(session, since=lo, until=hi, project=project, resource=resource):
            typer.echo(json.dumps(event, sort_keys=True))


@app.command("openapi")
def openapi() -> None:
    """Print the OpenAPI document (sorted keys, indent 2) to stdout."""
    from service.app import create_app

    sys.stdout.write(openapi_text(create_app()))


def openapi_text(fastapi_app: Any) -> str:
    """The canonical text of an app's OpenAPI document, as committed in openapi/openapi.json."""
    return json.dumps(fastapi_app.openapi(), sort_keys=True, indent=2) + "\n"


def _zoo_is_built(zoo: Path) -> bool:
    try:
        from medseglens_core.zoo import is_built
    except ImportError:
        return any((zoo / "models").glob("*/card.json"))
    return is_built(zoo)


def _build_demo_zoo(zoo: Path) -> None:
    try:
        from medseglens_core.zoo import build_zoo
    except ImportError:
        typer.echo(f"no zoo at {zoo} and no zoo builder installed; starting with an empty zoo", err=True)
        return

    def progress(event: Any) -> None:
        text = " ".join(f"{k}={v}" for k, v in event.items()) if isinstance(event, dict) else str(event)
        typer.echo(f"zoo: {text}", err=True)

    typer.echo(f"building the demo zoo in {zoo} (first start only) ...", err=True)
    if "progress" in inspect.signature(build_zoo).parameters:
        build_zoo(zoo, progress=progress)
    else:
        build_zoo(zoo)


def _ensure_demo_key(settings: Any) -> None:
    from service.auth import SCOPES, create_key, list_keys
    from service.db import session_scope

    with session_scope(_sessionmaker(settings)) as session:
        if list_keys(session):
            return
        _, plain = create_key(session, "demo", SCOPES)
    typer.echo("first start: created a demo API key with every scope (shown only this once):", err=True)
    typer.echo(plain)


@app.command("serve")
def serve(
    zoo: Annotated[Path | None, typer.Option(help="Zoo directory (models/, saes/, reports/).")] = None,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
) -> None:
    """Run the REST service (uvicorn). Builds the demo zoo on first start when no --zoo is given."""
    import uvicorn

    from medseglens_core.models.base import check_precision
    from service.app import create_app
    from service.config import get_settings
    from service.pool import resolve_device

    settings = get_settings()
    check_precision(settings.precision, resolve_device(settings.device))  # fp16 on a CPU: say so now
    if zoo is not None:
        settings = settings.model_copy(update={"zoo": zoo.expanduser().absolute()})
    elif not _zoo_is_built(settings.zoo_dir):
        _build_demo_zoo(settings.zoo_dir)
    _ensure_demo_key(settings)
    typer.echo(f"serving on http://{host}:{port} (docs at /docs), data in {settings.data_dir}", err=True)
    uvicorn.run(create_app(settings), host=host, port=port, access_log=False, log_config=None)
