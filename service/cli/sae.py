"""CLI commands: sae."""

from service.cli import app  # noqa: F401
