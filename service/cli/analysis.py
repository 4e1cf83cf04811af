"""CLI commands: analysis."""

from service.cli import app  # noqa: F401
