"""SegFormer (MiT-b0/b1/b2 encoder + all-MLP decode head) from ``transformers``, built from config.

Never loaded with ``from_pretrained``: no weights exist offline and the input has 4 MRI
channels. Hook points ``stage1``..``stage4`` are the outputs of the four encoder stages,
``(B, C_k, H/s_k, W/s_k)`` with ``s = (4, 8, 16, 32)`` and ``C = (32, 64, 160, 256)`` for b0
(``(64, 128, 320, 512)`` for b1/b2).

The forward pass drives the stages itself and hands their outputs to the decode head, instead
of going through ``SegformerModel.forward``: transformers 5.x collects the stage outputs for
the decode head with recorder hooks installed on the first forward, so a user hook that
replaces a stage output would otherwise have to run before them (DESIGN section 4). Driving
the stages directly means the decode head sees exactly what each stage module returned,
hooks included; :mod:`medseglens_core.models.hooks` still registers with ``prepend=True``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import SegformerConfig as HFSegformerConfig
from transformers import SegformerForSemanticSegmentation

from medseglens_core.errors import InvalidInput
from medseglens_core.models.base import BaseConfig, Prefix, SegModel, register

# MiT variants (SegFormer paper, table 6): hidden sizes, depths, decoder width.
VARIANTS: dict[str, dict] = {
    "b0": {"hidden_sizes": [32, 64, 160, 256], "depths": [2, 2, 2, 2], "decoder_hidden_size": 256},
    "b1": {"hidden_sizes": [64, 128, 320, 512], "depths": [2, 2, 2, 2], "decoder_hidden_size": 256},
    "b2": {"hidden_sizes": [64, 128, 320, 512], "depths": [3, 4, 6, 3], "decoder_hidden_size": 768},
}
HOOK_POINTS = ("stage1", "stage2", "stage3", "stage4")


@dataclass(frozen=True)
class SegFormerConfig(BaseConfig):
    """SegFormer config.

    Attributes:
        variant: "b0" (default, 3.7 M parameters), "b1" or "b2".
        input_size: square input side in pixels (default 96, like the U-Net: on a 2 mm brain that is
            about the native resolution, and training is 2.5x cheaper than at 128; the decode head predicts at 1/4
            resolution, upsampled bilinearly to the input size).
        drop_path_rate: stochastic depth rate during training.
        classifier_dropout: dropout before the classifier during training.
    """

    input_size: int = 96
    variant: str = "b0"
    drop_path_rate: float = 0.1
    classifier_dropout: float = 0.1


@register("segformer")
class SegFormer(SegModel):
    """SegFormer for 4-channel MRI slices; logits upsampled (bilinear) to the input size."""

    config_cls = SegFormerConfig
    default_hook = "stage3"

    def __init__(self, cfg: SegFormerConfig) -> None:
        super().__init__(cfg)
        if cfg.variant not in VARIANTS:
            raise InvalidInput(f"unknown SegFormer variant {cfg.variant!r}; choose one of {list(VARIANTS)}")
        hf_cfg = HFSegformerConfig(
            num_channels=cfg.in_channels,
            num_labels=cfg.num_classes,
            drop_path_rate=cfg.drop_path_rate,
            classifier_dropout_prob=cfg.classifier_dropout,
            **VARIANTS[cfg.variant],
        )
        self.net = SegformerForSemanticSegmentation(hf_cfg)

    @property
    def hook_points(self) -> tuple[str, ...]:
        return HOOK_POINTS

    def hook_module(self, hook: str) -> nn.Module:
        self.check_hook(hook)
        return self.net.segformer.stages[HOOK_POINTS.index(hook)]

    def _head(self, stage_outputs: list[torch.Tensor], out_size: tuple[int, int]) -> torch.Tensor:
        logits = self.net.decode_head(tuple(stage_outputs))
        return F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)

    def _run_stages(self, h: torch.Tensor, outputs: list[torch.Tensor], start: int, stop: int) -> None:
        for stage in self.net.segformer.stages[start:stop]:
            h = stage(h)
            outputs.append(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs: list[torch.Tensor] = []
        self._run_stages(x, outputs, 0, len(HOOK_POINTS))
        return self._head(outputs, (x.shape[-2], x.shape[-1]))

    def run_prefix(self, x: torch.Tensor, hook: str) -> Prefix:
        self.check_hook(hook)
        outputs: list[torch.Tensor] = []
        self._run_stages(x, outputs, 0, HOOK_POINTS.index(hook) + 1)
        return Prefix(hook, outputs[-1], tuple(outputs[:-1]), (x.shape[-2], x.shape[-1]))

    def run_suffix(self, prefix: Prefix, h: torch.Tensor) -> torch.Tensor:
        self._check_suffix_input(prefix, h)
        outputs = [*prefix.cache, h]
        self._run_stages(h, outputs, len(outputs), len(HOOK_POINTS))
        return self._head(outputs, prefix.out_size)
