"""TopK SAE (Gao et al. 2024): exactly ``k`` latents per token, at train and inference time.

The per-token selection is already batch-independent, so ``threshold`` stays zero and unused.
"""

from __future__ import annotations

import torch

from medseglens_core.sae.base import SAE, register_sae


@register_sae
class TopKSAE(SAE):
    """ReLU then the ``k`` largest activations of each token."""

    arch = "topk"

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        top = pre.topk(self.cfg.k, dim=1, sorted=False)
        return torch.zeros_like(pre).scatter(1, top.indices, top.values.clamp_min(0.0))

    def chunk_candidates(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        r, m = pre.shape
        top = pre.topk(self.cfg.k, dim=1, sorted=False)
        cols, order = top.indices.sort(dim=1)
        vals = top.values.gather(1, order).clamp_min(0.0)
        idx = cols + torch.arange(0, r * m, m, device=pre.device).unsqueeze(1)
        return idx.reshape(-1), vals.reshape(-1)

    def reference_codes(self, acts: torch.Tensor) -> torch.Tensor:
        top = acts.topk(self.cfg.k, dim=1, sorted=True)
        return torch.zeros_like(acts).scatter(1, top.indices, top.values)
