"""Latent card schema."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field


class LatentCard(BaseModel):
    """What one SAE latent does across cohorts and regions.

    ``firing_rate``: mean over a cohort's cases of the fraction of brain tokens where it fires;
    ``mean_activation``: mean over cases of its mean code; ``region``: fraction of its activation
    mass over healthy / NCR / SNFH / ET tokens; ``top_examples``: strongest tokens (may be empty).
    """

    sae_id: str
    latent: int
    source: str = Field(description="'sae_dir' (cards shipped with the SAE) or 'computed' (zoo data).")
    firing_rate: dict[str, float]
    mean_activation: dict[str, float]
    n_cases: dict[str, int]
    region: dict[str, float]
    top_examples: list[dict[str, Any]]
