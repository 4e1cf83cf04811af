"""BatchTopK SAE (Bussmann et al. 2024), the default and the paper's choice.

Training keeps the ``k * B`` largest activations over the whole flattened batch (so the
per-token count varies, averaging ``k``), selected without a full sort
(:func:`~medseglens_core.sae.step.batch_topk_select`). At inference a token's code must not
depend on its batch, so the activation becomes JumpReLU with one global threshold: the running
(exponential, momentum ``cfg.threshold_momentum``) mean over training steps of the smallest
positive activation the batch selection kept. ``threshold`` is stored as a ``(d_sae,)`` buffer
holding that value in every entry, as SAELens's JumpReLU expects.
"""

from __future__ import annotations

import torch

from medseglens_core.sae.base import SAE, SparseCodes, register_sae
from medseglens_core.sae.step import batch_topk_select


@register_sae
class BatchTopKSAE(SAE):
    """BatchTopK at train time, JumpReLU (global threshold) at inference."""

    arch = "batchtopk"

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        return pre * (pre > self.threshold)

    def select(self, pre: torch.Tensor) -> SparseCodes:
        codes, self._select_hint = batch_topk_select(pre, self.cfg.k * pre.shape[0], self._select_hint)
        return codes

    def reference_codes(self, acts: torch.Tensor) -> torch.Tensor:
        flat = acts.reshape(-1)
        top = flat.topk(min(self.cfg.k * acts.shape[0], flat.numel()), sorted=True)
        z = torch.zeros_like(flat).scatter(0, top.indices, top.values)
        self.observe_codes(top.values.detach())
        return z.view_as(acts)

    @torch.no_grad()
    def observe_codes(self, vals: torch.Tensor) -> None:
        positive = vals[vals > 0]
        if positive.numel() == 0:
            return
        current = positive.min().to(self.threshold.dtype)
        if self._threshold_updates == 0:
            self.threshold.fill_(current)
        else:
            mom = self.cfg.threshold_momentum
            self.threshold.mul_(mom).add_((1.0 - mom) * current)
        self._threshold_updates += 1
