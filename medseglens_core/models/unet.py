"""2-D residual U-Net from MONAI (``monai.networks.nets.UNet``), built from config.

MONAI nests the network as ``Sequential(down_1, SkipConnection(Sequential(down_2, ...,
up_2)), up_1)``; the innermost ``SkipConnection.submodule`` is the bottleneck. This module
unrolls that nesting once (:meth:`UNet._levels`) and drives the blocks itself, so the encoder
skips can be cached and the decoder re-run alone.

Hook points (with the default channels ``(16, 32, 64, 128, 256)`` and strides ``(2, 2, 2, 2)``,
input ``(B, 4, H, W)``):

- ``enc1``..``enc4``: output of each encoder block, ``(B, 16|32|64|128, H/2|H/4|H/8|H/16, ...)``;
- ``bottleneck``: output of the innermost block, ``(B, 256, H/16, W/16)``;
- ``dec1``..``dec4``: output of each decoder block in execution order, from the deepest
  (``dec1``: ``(B, 64, H/8, W/8)``) to the last (``dec4``: the logits ``(B, 4, H, W)``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from monai.networks.nets import UNet as MonaiUNet
from torch import nn

from medseglens_core.errors import InvalidInput
from medseglens_core.models.base import BaseConfig, Prefix, SegModel, register


@dataclass(frozen=True)
class UNetConfig(BaseConfig):
    """U-Net config.

    Attributes:
        input_size: square input side in pixels (default 96; must be divisible by the product
            of ``strides``).
        channels: feature channels per level, outermost first; the last is the bottleneck.
        strides: downsampling stride between levels (``len(channels) - 1`` entries).
        num_res_units: residual units per block (1: faster, 2: MONAI's usual choice).
        dropout: dropout inside the blocks during training.
    """

    input_size: int = 96
    channels: tuple[int, ...] = (16, 32, 64, 128, 256)
    strides: tuple[int, ...] = (2, 2, 2, 2)
    num_res_units: int = 1
    dropout: float = 0.0

    def __post_init__(self) -> None:
        # Configs read back from JSON hold lists; keep them hashable tuples.
        object.__setattr__(self, "channels", tuple(self.channels))
        object.__setattr__(self, "strides", tuple(self.strides))
        if len(self.strides) != len(self.channels) - 1:
            raise InvalidInput(
                f"U-Net needs len(strides) == len(channels) - 1, got {self.strides} and {self.channels}"
            )


@register("unet")
class UNet(SegModel):
    """MONAI residual U-Net for 4-channel MRI slices."""

    config_cls = UNetConfig
    default_hook = "bottleneck"

    def __init__(self, cfg: UNetConfig) -> None:
        super().__init__(cfg)
        self.net = MonaiUNet(
            spatial_dims=2,
            in_channels=cfg.in_channels,
            out_channels=cfg.num_classes,
            channels=cfg.channels,
            strides=cfg.strides,
            num_res_units=cfg.num_res_units,
            dropout=cfg.dropout,
        )
        downs, bottom, ups = self._levels()
        # Plain references (not submodule attributes), so the state dict holds each weight once.
        object.__setattr__(self, "_downs", downs)
        object.__setattr__(self, "_bottom", bottom)
        object.__setattr__(self, "_ups", ups)
        n = len(self._downs)
        self._hooks = (
            *(f"enc{i + 1}" for i in range(n)),
            "bottleneck",
            *(f"dec{i + 1}" for i in range(n)),
        )

    def _levels(self) -> tuple[list[nn.Module], nn.Module, list[nn.Module]]:
        """Unroll MONAI's nesting: encoder blocks (outer first), bottleneck, decoder blocks (inner first)."""
        downs: list[nn.Module] = []
        ups: list[nn.Module] = []
        block: nn.Module = self.net.model
        while isinstance(block, nn.Sequential):
            down, skip, up = block
            downs.append(down)
            ups.insert(0, up)
            block = skip.submodule
        return downs, block, ups

    @property
    def hook_points(self) -> tuple[str, ...]:
        return self._hooks

    def hook_module(self, hook: str) -> nn.Module:
        self.check_hook(hook)
        if hook == "bottleneck":
            return self._bottom
        index = int(hook[3:]) - 1
        return self._downs[index] if hook.startswith("enc") else self._ups[index]

    def _encode(self, x: torch.Tensor, skips: list[torch.Tensor], stop: int) -> torch.Tensor:
        """Run encoder blocks ``len(skips)..stop-1`` from ``x``, appending each output to ``skips``."""
        for down in self._downs[len(skips) : stop]:
            x = down(x)
            skips.append(x)
        return x

    def _decode(self, x: torch.Tensor, skips: list[torch.Tensor], start: int) -> torch.Tensor:
        """Run decoder blocks ``start..`` from ``x``; block ``i`` reads ``cat([skip, x])`` like MONAI."""
        n = len(self._downs)
        for i in range(start, n):
            x = self._ups[i](torch.cat([skips[n - 1 - i], x], dim=1))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        x = self._encode(x, skips, len(self._downs))
        return self._decode(self._bottom(x), skips, 0)

    def run_prefix(self, x: torch.Tensor, hook: str) -> Prefix:
        self.check_hook(hook)
        out_size = (x.shape[-2], x.shape[-1])
        skips: list[torch.Tensor] = []
        n = len(self._downs)
        if hook.startswith("enc"):
            h = self._encode(x, skips, int(hook[3:]))
            # The hooked output is both the next block's input and a skip: the suffix uses h for both.
            return Prefix(hook, h, tuple(skips[:-1]), out_size)
        h = self._bottom(self._encode(x, skips, n))
        if hook.startswith("dec"):
            for i in range(int(hook[3:])):
                h = self._ups[i](torch.cat([skips[n - 1 - i], h], dim=1))
        return Prefix(hook, h, tuple(skips), out_size)

    def run_suffix(self, prefix: Prefix, h: torch.Tensor) -> torch.Tensor:
        self._check_suffix_input(prefix, h)
        hook = prefix.hook
        skips = list(prefix.cache)
        n = len(self._downs)
        if hook.startswith("enc"):
            skips.append(h)
            x = self._encode(h, skips, n)
            return self._decode(self._bottom(x), skips, 0)
        start = 0 if hook == "bottleneck" else int(hook[3:])
        return self._decode(h, skips, start)
