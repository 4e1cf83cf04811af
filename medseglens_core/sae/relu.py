"""ReLU SAE with an L1 sparsity penalty weighted by the decoder row norms (Anthropic, 2024).

Loss adds ``l1_coeff * mean_b sum_j z_j * ||W_dec[j]||``. Every positive pre-activation is a
code, so ``k`` is unused and there is no aux-k term (dead latents still count in metrics).
Since decoder rows are kept at unit norm the weighting matters for its gradient direction only
before the parallel component is projected out; it is kept so the loss matches SAELens.
"""

from __future__ import annotations

import torch

from medseglens_core.sae.base import SAE, register_sae
from medseglens_core.sae.select import candidates_above


@register_sae
class ReLUSAE(SAE):
    """Plain ReLU encoder with a decoder-norm-weighted L1 penalty."""

    arch = "relu"
    uses_aux = False
    uses_l1 = True

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        return torch.relu(pre)

    def chunk_candidates(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return candidates_above(pre, 0.0)

    def reference_codes(self, acts: torch.Tensor) -> torch.Tensor:
        return acts
