"""Schemas of the zoo catalog: models, SAEs and diff reports."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class ModelEntry(BaseModel):
    """A resident segmentation model: the fields clients filter on, and its full card."""

    id: str
    architecture: str = Field(description='Registry name: "segformer" or "unet".')
    hook_points: list[str] = Field(description="Named sites whose activations SAEs read and edits replace.")
    default_hook: str | None = None
    training_cohorts: list[str] = Field(default_factory=list)
    device: str
    card: dict[str, Any] = Field(
        description="The card JSON (config, input spec, Dice per cohort, sha256, ...)."
    )


class UnavailableEntry(BaseModel):
    """A zoo entry present on disk that cannot serve (unreadable weights, sha256 not matching its card)."""

    id: str
    model_id: str | None = Field(default=None, description="For an SAE: its model, when its card says.")
    available: bool = Field(default=False, description="Always false: requests naming it get a 503.")
    error: str = Field(description="Why it could not be loaded, and what to do.")


class ModelList(BaseModel):
    items: list[ModelEntry]
    unavailable: list[UnavailableEntry] = Field(
        default_factory=list, description="Models in the zoo that failed to load (not in items)."
    )


class SaeEntry(BaseModel):
    """A resident sparse autoencoder: which model and hook it reads, its size, and its full card."""

    id: str
    model_id: str | None = Field(description="The segmentation model whose activations it encodes.")
    hook: str | None = Field(description="Hook point of that model.")
    architecture: str | None = Field(default=None, description='"batchtopk", "topk" or "relu".')
    d_in: int | None = None
    d_sae: int | None = Field(default=None, description="Number of latents.")
    k: int | None = None
    device: str
    card: dict[str, Any] = Field(description="The card JSON (cohorts, metrics, sha256, ...).")


class SaeList(BaseModel):
    items: list[SaeEntry]
    unavailable: list[UnavailableEntry] = Field(
        default_factory=list, description="SAEs in the zoo that failed to load (not in items)."
    )


class ReportSummary(BaseModel):
    """A diff report found in the zoo (``ZOO/reports/<id>/report.json``)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    title: str = ""
    has_html: bool


class ReportList(BaseModel):
    items: list[ReportSummary]
