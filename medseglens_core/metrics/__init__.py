"""BraTS metrics: Dice, HD95 (mm) per label and region, region volumes (see :mod:`.brats`)."""

from medseglens_core.metrics.brats import (
    HD95_EMPTY,
    LABELS,
    REGIONS,
    dice,
    hd95,
    region_volumes_ml,
    score_segmentation,
)

__all__ = ["HD95_EMPTY", "LABELS", "REGIONS", "dice", "hd95", "region_volumes_ml", "score_segmentation"]
