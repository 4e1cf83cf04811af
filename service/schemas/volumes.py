"""Volume schemas."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field


class VolumeFile(BaseModel):
    """One stored file of a volume, as uploaded (its bytes are kept unchanged)."""

    role: str = Field(description="t1n, t1c, t2w, t2f, image (one 4-D file) or label.")
    sha256: str = Field(description="sha256 of the uploaded bytes, hex.")
    bytes: int = Field(description="Size of the uploaded file in bytes.")


class VolumeOut(BaseModel):
    """An uploaded volume. ``shape`` is [X, Y, Z] of the RAS-canonical arrays; ``spacing`` in mm."""

    id: str
    created: datetime
    cohort: str | None
    metadata: dict[str, Any]
    shape: list[int] = Field(min_length=3, max_length=3)
    spacing: list[float] = Field(min_length=3, max_length=3)
    files: list[VolumeFile]
    has_label: bool
    modality_order: list[str] | None = Field(
        default=None, description="4th-axis order of a 4-D `image` upload; null for separate files."
    )


class VolumePage(BaseModel):
    """One page of volumes, newest first."""

    items: list[VolumeOut]
    total: int
    limit: int
    offset: int
