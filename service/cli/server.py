"""CLI commands: server."""

from service.cli import app  # noqa: F401
