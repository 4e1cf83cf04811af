"""CLI commands: data."""

from service.cli import app  # noqa: F401
