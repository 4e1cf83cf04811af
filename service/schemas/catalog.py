"""Schemas of the zoo catalog: models, SAEs and diff reports."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class CatalogEntry(BaseModel):
    """A resident model or SAE: its id, device and card (fields as written by the core)."""

    id: str
    device: str
    card: dict[str, Any] = Field(description="The card JSON (architecture, hook point, metrics, ...).")


class CatalogList(BaseModel):
    items: list[CatalogEntry]


class ReportSummary(BaseModel):
    """A diff report found in the zoo (``ZOO/reports/<id>/report.json``)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    title: str = ""
    has_html: bool


class ReportList(BaseModel):
    items: list[ReportSummary]
