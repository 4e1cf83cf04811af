"""TopK SAE (Gao et al. 2024): exactly ``k`` latents per token, at train and inference time.

The per-token selection is already batch-independent, so ``threshold`` stays zero and unused.
"""

from __future__ import annotations

import torch

from medseglens_core.sae.base import SAE, SparseCodes, register_sae


@register_sae
class TopKSAE(SAE):
    """ReLU then the ``k`` largest activations of each token."""

    arch = "topk"

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        top = pre.topk(self.cfg.k, dim=1, sorted=False)
        return torch.zeros_like(pre).scatter(1, top.indices, top.values.clamp_min(0.0))

    def select(self, pre: torch.Tensor) -> SparseCodes:
        b = pre.shape[0]
        top = pre.topk(self.cfg.k, dim=1, sorted=False)
        cols, order = top.indices.sort(dim=1)
        vals = top.values.gather(1, order).clamp_min(0.0)
        rows = torch.arange(b, device=pre.device).repeat_interleave(self.cfg.k)
        return SparseCodes(rows=rows, cols=cols.reshape(-1), vals=vals.reshape(-1), n_rows=b)

    def reference_codes(self, acts: torch.Tensor) -> torch.Tensor:
        top = acts.topk(self.cfg.k, dim=1, sorted=True)
        return torch.zeros_like(acts).scatter(1, top.indices, top.values)
