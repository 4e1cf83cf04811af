"""CLI commands of the service: ``serve``, ``keys create|list|revoke``, ``openapi``."""

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


def _sessionmaker(settings: Any):  # noqa: ANN202 - sessionmaker[Session]
    from service.db import create_tables, make_engine, make_sessionmaker

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url)
    create_tables(engine)
    return make_sessionmaker(engine)


@keys_app.command("create")
def keys_create(
    scopes: Annotated[
        str, typer.Option(help="Comma-separated: read,segment,intervene,train,admin.")
    ] = "read",
    name: Annotated[str, typer.Option(help="A label for people (who or what uses the key).")] = "key",
) -> None:
    """Create an API key; the last line of output is the key itself (shown only this once)."""
    from service.auth import create_key, parse_scopes
    from service.config import get_settings
    from service.db import session_scope

    try:
        parse_scopes(scopes)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--scopes") from exc
    with session_scope(_sessionmaker(get_settings())) as session:
        row, plain = create_key(session, name, scopes)
        typer.echo(f"created key id={row.id} name={row.name} scopes={','.join(row.scopes)}")
    typer.echo(plain)


@keys_app.command("list")
def keys_list() -> None:
    """List API keys: id, prefix, name, scopes, created, revoked (never the key)."""
    from service.auth import list_keys
    from service.config import get_settings
    from service.db import session_scope

    with session_scope(_sessionmaker(get_settings())) as session:
        for row in list_keys(session):
            revoked = row.revoked.isoformat() if row.revoked else "-"
            typer.echo(
                f"{row.id}  {row.prefix}...  {row.name}  {','.join(row.scopes)}  "
                f"created={row.created.isoformat()}  revoked={revoked}"
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

    from service.app import create_app
    from service.config import get_settings

    settings = get_settings()
    if zoo is not None:
        settings = settings.model_copy(update={"zoo": zoo.expanduser().absolute()})
    elif not _zoo_is_built(settings.zoo_dir):
        _build_demo_zoo(settings.zoo_dir)
    _ensure_demo_key(settings)
    typer.echo(f"serving on http://{host}:{port} (docs at /docs), data in {settings.data_dir}", err=True)
    uvicorn.run(create_app(settings), host=host, port=port, access_log=False, log_config=None)
