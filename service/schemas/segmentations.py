"""Segmentation schemas: the request, the per-latent statistics and the stored summary."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from service.schemas.trust import OOD, Provenance

ID_PATTERN = r"^[0-9a-f]{32}$"
CATALOG_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$"


class SegmentationCreate(BaseModel):
    """Segment one uploaded volume with one resident model (and summarise an SAE's latents)."""

    model_config = ConfigDict(extra="forbid")

    volume_id: str = Field(pattern=ID_PATTERN, description="Id of an uploaded volume.")
    model_id: str = Field(pattern=CATALOG_PATTERN, description="Id of a resident model (GET /v1/models).")
    sae_id: str | None = Field(
        default=None,
        pattern=CATALOG_PATTERN,
        description="SAE trained on this model; null -> the model's first SAE by id, none when it has none.",
    )
    top_k: int = Field(default=10, ge=1, le=100, description="Latents to report, ranked by total activation.")


class Score(BaseModel):
    """Dice (0..1) and HD95 (mm) of one region or label against the volume's label map."""

    dice: float
    hd95: float


class Scores(BaseModel):
    """Scores per BraTS label (NCR, SNFH, ET) and region (WT, TC, ET)."""

    labels: dict[str, Score]
    regions: dict[str, Score]


class RegionOverlap(BaseModel):
    """Overlap of a latent's active voxels A with a region R: IoU |A&R|/|A|R|, precision |A&R|/|A|."""

    iou: float
    precision: float


class LatentOverlap(BaseModel):
    """Overlap per label (NCR, SNFH, ET) with the prediction and, when labelled, the ground truth."""

    predicted: dict[str, RegionOverlap]
    ground_truth: dict[str, RegionOverlap] | None = None


class TopLatent(BaseModel):
    """One latent's statistics in this volume (activation units of the SAE code).

    ``total_activation`` sums the code over brain tokens; ``tumour_activation`` weights it by each
    token's predicted tumour fraction; ``max``/``mean`` are over its active voxels on the case grid;
    ``centroid_vox`` is ``[x, y, z]`` on the RAS case grid, ``centroid_mm`` the same in scanner mm.
    """

    latent: int
    total_activation: float
    tumour_activation: float
    max: float
    mean: float
    active_voxels: int
    centroid_vox: list[float] | None
    centroid_mm: list[float] | None
    overlap: LatentOverlap


class SegmentationOut(BaseModel):
    """A stored segmentation: region volumes (mL), scores when labelled, top latents, timings (s)."""

    id: str
    created: datetime
    volume_id: str
    model_id: str
    sae_id: str | None
    hook: str | None = Field(description="Hook point the SAE reads (null without an SAE).")
    region_volumes_ml: dict[str, float] = Field(description="WT, TC, ET, NCR, SNFH in millilitres.")
    scores: Scores | None = Field(description="Null when the volume has no label map.")
    top_latents: list[TopLatent]
    timings: dict[str, float] = Field(description="Seconds per stage (load, network, latents, write, total).")
    ood: OOD | None = Field(default=None, description="Out-of-distribution flag (null on older rows).")
    provenance: Provenance | None = Field(
        default=None, description="Weights and versions (null on older rows)."
    )


class SegmentationPage(BaseModel):
    """One page of segmentations, newest first."""

    items: list[SegmentationOut]
    total: int
    limit: int
    offset: int
