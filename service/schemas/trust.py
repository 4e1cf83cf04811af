"""The ``ood`` and ``provenance`` blocks shared by segmentations, interventions and job results."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


class OODThresholds(BaseModel):
    latent: float | None = Field(description="Calibrated latent-distance threshold (null without an SAE).")
    input: float = Field(description="Calibrated input-statistics threshold (SDs from the nearest cohort).")


class OOD(BaseModel):
    """Whether the scan looks unlike every cohort the model and SAE were built on.

    ``score`` is the larger of the latent and input distances, each divided by its threshold
    (calibrated on the zoo's validation cases): above 1 is out of distribution. Uncalibrated
    (no validation cases): ``calibrated`` false, ``score`` null, and only the rule that needs no
    calibration (near-identical modalities) can flag. A flagged scan still gets its mask.
    """

    score: float | None = Field(
        description="max(latent, input distance / threshold); > 1 flags. Null uncalibrated."
    )
    flagged: bool
    nearest_cohort: str | None = Field(description="The training cohort whose profile is closest.")
    reasons: list[str] = Field(description="Why it is flagged (empty when not).")
    calibrated: bool
    latent_distance: float | None = Field(
        default=None, description="RMS standardised log firing-rate distance to the nearest cohort."
    )
    input_distance: float | None = Field(default=None, description="Largest standardised input statistic.")
    thresholds: OODThresholds | None = None
    note: str | None = Field(default=None, description="Why there is no calibration, when there is none.")


class Provenance(BaseModel):
    """Which weights and software made the result. sha256 values are of the weights files on disk."""

    model_id: str | None
    model_sha256: str | None
    sae_id: str | None
    sae_sha256: str | None
    package_version: str
    zoo_config_sha256: str | None
    seed: int | None = Field(description="The model's training seed (its card).")
    device: str | None
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        default="fp32", description="The network's precision (bf16/fp16: autocast); SAE codes are float32."
    )
    torch_version: str
