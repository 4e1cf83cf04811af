"""A tiny planted model + SAE whose latents have known meanings (used by the analysis tests).

Model: ``run_prefix`` average-pools the 4-channel input by 2 (``h`` is ``(B, 4, H/2, W/2)``);
``run_suffix`` turns channel 0 into the NCR logit, 1 into ET, 3 into SNFH (``6*h - 3``), with
background logit 0, then upsamples by 2 (nearest).
SAE: ReLU with ``W_enc = [I, -I]``, ``W_dec = [I; -I]`` (d_in 4, d_sae 8): latent ``c`` is the
positive part of channel ``c``, latent ``4 + c`` the negative part; reconstruction is exact.
Planted cohort effect: in ``ssa`` cases channel 3 holds a bright blob labelled SNFH, so latent 3
fires only in ``ssa`` and drives the SNFH prediction; in ``adult`` channel 3 is never positive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

H = 16
BLOB = (slice(4, 10), slice(6, 12))  # in-plane SNFH blob on the 16x16 input grid


@dataclass
class Prefix:
    h: torch.Tensor


class TinyModel(nn.Module):
    default_hook = "mid"
    hook_points = ("mid",)
    arch = "tiny"

    def __init__(self) -> None:
        super().__init__()
        self.config = {"input_size": H}
        self.gain = nn.Parameter(torch.tensor(6.0))

    def run_prefix(self, x: torch.Tensor, hook: str) -> Prefix:
        return Prefix(h=F.avg_pool2d(x, 2))

    def run_suffix(self, prefix: Prefix, h: torch.Tensor) -> torch.Tensor:
        fg = self.gain * h - 3.0
        logits = torch.stack([torch.zeros_like(h[:, 0]), fg[:, 0], fg[:, 3], fg[:, 1]], dim=1)
        return F.interpolate(logits, scale_factor=2, mode="nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.run_prefix(x, "mid")
        return self.run_suffix(p, p.h)


class TinySAE(nn.Module):
    def __init__(self, d_in: int = 4) -> None:
        super().__init__()
        eye = torch.eye(d_in)
        self.W_enc = nn.Parameter(torch.cat([eye, -eye], dim=1))  # (d_in, d_sae)
        self.W_dec = nn.Parameter(torch.cat([eye, -eye], dim=0))  # (d_sae, d_in)
        self.b_enc = nn.Parameter(torch.zeros(2 * d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.W_enc + self.b_enc)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.W_dec + self.b_dec


def planted_slices(cohort: str, seed: int, z: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(slices (Z,4,H,H), brain (Z,H,H), labels (Z,H,H))`` of one planted case."""
    g = torch.Generator().manual_seed(seed)
    brain = torch.zeros(z, H, H, dtype=torch.bool)
    brain[:, 2:14, 2:14] = True
    x = torch.randn(z, 4, H, H, generator=g) * 0.5
    x[:, 3] = -x[:, 3].abs() - 0.1  # channel 3 never positive by default
    labels = torch.zeros(z, H, H, dtype=torch.uint8)
    if cohort == "ssa":
        x[:, 3][:, BLOB[0], BLOB[1]] = 1.5
        labels[:, BLOB[0], BLOB[1]] = 2
    x = x * brain[:, None]
    return x, brain, labels


def planted_case_arrays(cohort: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A 3-D planted case: ``image (4, X, Y, Z)`` float32 and ``label (X, Y, Z)`` uint8 (RAS)."""
    x, _, lab = planted_slices(cohort, seed)
    return x.permute(1, 2, 3, 0).numpy().astype(np.float32), lab.permute(1, 2, 0).numpy()
