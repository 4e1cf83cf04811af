"""SAE quality metrics: reconstruction on held-out tokens and segmentation fidelity of the splice.

Reconstruction metrics (all in the ORIGINAL activation units, inference-time codes):

- ``mse``: mean over tokens and channels of ``(x_hat - x)^2``.
- ``normalized_mse``: ``sum ||x_hat - x||^2 / sum ||x||^2``.
- ``explained_variance``: ``1 - sum ||x_hat - x||^2 / sum ||x - mean(x)||^2`` (mean over the set).
- ``l0``: mean number of non-zero codes per token.
- ``dead_fraction``: fraction of latents that never fire on the set.
- ``dense_fraction``: fraction of latents firing on more than ``dense_threshold`` (default 10%)
  of the tokens.

Segmentation fidelity (:func:`splice_fidelity`) lives in :mod:`medseglens_core.sae.fidelity`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from medseglens_core.sae.base import SAE
from medseglens_core.sae.errors import NoActivations

__all__ = ["reconstruction_metrics"]


@torch.no_grad()
def reconstruction_metrics(
    sae: SAE,
    tokens: Iterable[torch.Tensor],
    *,
    max_tokens: int | None = None,
    dense_threshold: float = 0.1,
    chunk: int = 2048,
) -> dict[str, Any]:
    """Reconstruction metrics of ``sae`` over unscaled token chunks ``(n, d_in)`` (see module doc).

    Streams: memory is one chunk. ``max_tokens`` caps the tokens read (None: all).
    """
    dev = sae.W_enc.device
    d = sae.cfg.d_in
    n = 0
    err = torch.zeros((), dtype=torch.float64, device=dev)
    sq = torch.zeros((), dtype=torch.float64, device=dev)
    s1 = torch.zeros(d, dtype=torch.float64, device=dev)
    nnz = torch.zeros((), dtype=torch.float64, device=dev)
    fires = torch.zeros(sae.cfg.d_sae, dtype=torch.float64, device=dev)
    for block in tokens:
        for x in block.split(chunk):
            if max_tokens is not None and n >= max_tokens:
                break
            if max_tokens is not None:
                x = x[: max_tokens - n]
            x = x.to(dev, torch.float32)
            z = sae.encode(x)
            x_hat = sae.decode(z)
            err += (x_hat - x).double().pow(2).sum()
            xd = x.double()
            sq += xd.pow(2).sum()
            s1 += xd.sum(0)
            active = z > 0
            nnz += active.sum()
            fires += active.sum(0)
            n += x.shape[0]
    if n == 0:
        raise NoActivations("no held-out tokens to evaluate the SAE on")
    total_var = sq - s1.pow(2).sum() / n
    freq = fires / n
    return {
        "n_tokens": n,
        "mse": float(err / (n * d)),
        "normalized_mse": float(err / sq.clamp_min(1e-30)),
        "explained_variance": float(1.0 - err / total_var.clamp_min(1e-30)),
        "l0": float(nnz / n),
        "dead_fraction": float((fires == 0).double().mean()),
        "dense_fraction": float((freq > dense_threshold).double().mean()),
    }
