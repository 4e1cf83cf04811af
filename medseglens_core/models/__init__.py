"""Segmentation models: SegFormer and U-Net builders, hook points, training and volume inference.

Importing this package registers both architectures (``"segformer"``, ``"unet"``).
"""

from medseglens_core.models import segformer as _segformer  # noqa: F401  (registers "segformer")
from medseglens_core.models import unet as _unet  # noqa: F401  (registers "unet")
from medseglens_core.models.base import Prefix, SegModel, architectures, build_model, register
from medseglens_core.models.hooks import Captured, capture, replace

__all__ = [
    "Captured",
    "Prefix",
    "SegModel",
    "architectures",
    "build_model",
    "capture",
    "register",
    "replace",
]
