"""Tiny stand-ins with the interfaces the interventions package uses (no data, no training)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medseglens_core.models.base import BaseConfig, Prefix, SegModel


class IdentityPrepared:
    """A PreparedCase whose case grid IS the slice grid: ``(Z, C, H, W) -> (C, H, W, Z)``.

    ``label`` ``(H, W, Z)`` (optional) becomes ``labels`` ``(Z, H, W)`` on the model grid."""

    def __init__(self, slices: torch.Tensor, label: np.ndarray | None = None) -> None:
        self.slices = slices
        self.labels = (
            None if label is None else torch.from_numpy(np.ascontiguousarray(label.transpose(2, 0, 1)))
        )

    def to_case_grid(self, maps: torch.Tensor) -> np.ndarray:
        return maps.detach().permute(1, 2, 3, 0).cpu().numpy()


class ReluSAE(nn.Module):
    """ReLU SAE: ``z = relu((x - b_dec) W_enc + b_enc)``, ``x_hat = z W_dec + b_dec``."""

    def __init__(self, w_enc: torch.Tensor, w_dec: torch.Tensor, b_enc=None, b_dec=None) -> None:
        super().__init__()
        self.W_enc = nn.Parameter(w_enc.float())
        self.W_dec = nn.Parameter(w_dec.float())
        self.b_enc = nn.Parameter(torch.zeros(w_enc.shape[1]) if b_enc is None else b_enc.float())
        self.b_dec = nn.Parameter(torch.zeros(w_enc.shape[0]) if b_dec is None else b_dec.float())

    @classmethod
    def random(cls, d_in: int, d_sae: int, seed: int = 0) -> ReluSAE:
        g = torch.Generator().manual_seed(seed)
        w = torch.randn(d_sae, d_in, generator=g)
        w = w / w.norm(dim=1, keepdim=True)
        return cls(w.t().clone(), w, b_enc=torch.full((d_sae,), -0.05))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W_dec + self.b_dec


class PlantedModel(SegModel):
    """Hook ``h`` = 4x4 average pool of the input; hook channel 1 drives SNFH, channel 2 ET.

    Suffix: upsample ``h`` x4 (nearest) to ``u``; logits = [0.5, -10, 4*u1, 4*u2]. With the
    identity SAE (latent j = relu(channel j)), latent 1 is the oedema latent.
    """

    default_hook = "h"

    def __init__(self) -> None:
        super().__init__(BaseConfig(input_size=16))
        self.dummy = nn.Parameter(torch.zeros(1))

    @property
    def hook_points(self) -> tuple[str, ...]:
        return ("h",)

    def run_prefix(self, x: torch.Tensor, hook: str) -> Prefix:
        self.check_hook(hook)
        return Prefix(hook, F.avg_pool2d(x, 4), (), tuple(x.shape[-2:]))

    def run_suffix(self, prefix: Prefix, h: torch.Tensor) -> torch.Tensor:
        u = F.interpolate(h, size=prefix.out_size, mode="nearest")
        b, _, hh, ww = u.shape
        bg = torch.full((b, hh, ww), 0.5)
        ncr = torch.full((b, hh, ww), -10.0)
        return torch.stack([bg, ncr, 4 * u[:, 1], 4 * u[:, 2]], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.run_prefix(x, "h")
        return self.run_suffix(p, p.h)


def identity_sae(d: int = 4) -> ReluSAE:
    return ReluSAE(torch.eye(d), torch.eye(d))


def planted_volume(oedema_gain: float, seed: int, size: int = 16, depth: int = 6):
    """Slices ``(Z, 4, H, W)`` and labels ``(H, W, Z)``: an 8x8 oedema square (channel 1 at
    ``oedema_gain``) with a 4x4 ET core (channel 2) in one corner, aligned to the 4x4 hook cells
    so no cell mixes tissues. The oedema logit is 4*gain: found when gain > 0.125."""
    rng = np.random.default_rng(seed)
    x = np.zeros((depth, 4, size, size), dtype=np.float32)
    label = np.zeros((size, size, depth), dtype=np.uint8)
    a, b = (int(v) * 4 for v in rng.integers(0, size // 4 - 1, size=2))
    for z in range(1, depth - 1):
        x[z, 1, a : a + 8, b : b + 8] = oedema_gain
        label[a : a + 8, b : b + 8, z] = 2
        x[z, 2, a + 4 : a + 8, b + 4 : b + 8] = 1.0
        x[z, 1, a + 4 : a + 8, b + 4 : b + 8] = 0.0
        label[a + 4 : a + 8, b + 4 : b + 8, z] = 3
    x += rng.normal(0, 0.005, x.shape).astype(np.float32)
    x[:, 1][label.transpose(2, 0, 1) != 2] -= 0.05  # the oedema channel is silent off the oedema
    return torch.from_numpy(x), label


def planted_items(cohort: str, gain: float, seeds: range) -> list:
    """Recovery items of planted volumes (:func:`planted_volume`) with oedema gain ``gain``."""
    from medseglens_core.interventions.cache import PrefixCache
    from medseglens_core.interventions.search import VolumeItem

    model = PlantedModel()
    out = []
    for s in seeds:
        slices, label = planted_volume(gain, s)
        cache = PrefixCache.build(model, IdentityPrepared(slices, label))
        out.append(VolumeItem(f"{cohort}-{s:02d}", cohort, cache, label, (1.0, 1.0, 1.0)))
    return out
