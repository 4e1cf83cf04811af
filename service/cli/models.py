"""CLI commands: models."""

from service.cli import app  # noqa: F401
