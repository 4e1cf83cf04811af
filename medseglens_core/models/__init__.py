"""Segmentation models: SegFormer and U-Net builders, hook points, training and volume inference.

Importing this package registers both architectures (``"segformer"``, ``"unet"``).
"""

from medseglens_core.models import segformer as _segformer  # noqa: F401  (registers "segformer")
from medseglens_core.models import unet as _unet  # noqa: F401  (registers "unet")
from medseglens_core.models.base import (
    PRECISIONS,
    Prefix,
    SegModel,
    architectures,
    build_model,
    check_precision,
    register,
)
from medseglens_core.models.card import load_model, read_card, save_model
from medseglens_core.models.hooks import Captured, capture, replace
from medseglens_core.models.inference import Segmentation, predict_slices, resolve_device, segment_case

__all__ = [
    "PRECISIONS",
    "Captured",
    "Prefix",
    "SegModel",
    "Segmentation",
    "architectures",
    "build_model",
    "capture",
    "check_precision",
    "load_model",
    "predict_slices",
    "read_card",
    "register",
    "replace",
    "resolve_device",
    "save_model",
    "segment_case",
]
