"""BatchTopK SAE (Bussmann et al. 2024), the default and the paper's choice.

Training keeps the ``k * B`` largest activations over the whole flattened batch (so the
per-token count varies, averaging ``k``), selected without any sort: a candidate threshold
(last step's n-th value with a 10% margin) filters each chunk of pre-activations while it is
in cache, then :func:`~medseglens_core.sae.select.top_n_in_order` keeps the top ``k * B``
candidates. Exact: a batch with too few candidates is rescanned (``finish_selection``).
At inference a token's code must not depend on its batch, so the activation becomes JumpReLU with one global threshold: the running
(exponential, momentum ``cfg.threshold_momentum``) mean over training steps of the smallest
positive activation the batch selection kept. ``threshold`` is stored as a ``(d_sae,)`` buffer
holding that value in every entry, as SAELens's JumpReLU expects.
"""

from __future__ import annotations

import torch

from medseglens_core.sae.base import SAE, register_sae
from medseglens_core.sae.select import candidates_above, first_hint, top_n_in_order


@register_sae
class BatchTopKSAE(SAE):
    """BatchTopK at train time, JumpReLU (global threshold) at inference."""

    arch = "batchtopk"

    def activation(self, pre: torch.Tensor) -> torch.Tensor:
        return pre * (pre > self.threshold)

    def chunk_candidates(self, pre: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._select_hint is None:
            self._select_hint = first_hint(pre, self.cfg.k)
        return candidates_above(pre, self._select_hint)

    def candidate_threshold(self) -> float | None:
        return self._select_hint or None  # None on the first step (no hint yet) and on rescans

    def finish_selection(
        self, idx: torch.Tensor, vals: torch.Tensor, n_rows: int
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        n = min(self.cfg.k * n_rows, n_rows * self.cfg.d_sae)
        hint = self._select_hint or 0.0
        if idx.numel() < n and hint > 0.0:
            # The threshold was too high for this batch: rescan taking every positive entry,
            # so the selection stays exact.
            self._select_hint = 0.0
            return None
        idx, vals = top_n_in_order(idx, vals, n)
        self._select_hint = 0.9 * float(vals.min()) if vals.numel() else 0.0
        return idx, vals

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
