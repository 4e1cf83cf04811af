"""The straightforward SAE training step, kept as the reference the fast step is tested against.

This is how the well-known BatchTopK trainers do it: ``b_dec`` subtracted from the input inside
autograd, a full sorted top-k, a dense ``(B, d_sae) @ W_dec`` decode, and autograd for all
gradients (six dense GEMMs per step). Do not optimise this file: it is the frozen reference
for equivalence tests and the baseline of ``benchmarks/sae_train.py``.
"""

from __future__ import annotations

import torch

from medseglens_core.sae.base import SAE
from medseglens_core.sae.step import StepStats

__all__ = ["reference_step"]


def reference_step(sae: SAE, x: torch.Tensor, dead: torch.Tensor | None = None) -> StepStats:
    """Same contract as :func:`medseglens_core.sae.step.fast_step`, computed by autograd."""
    cfg = sae.cfg
    b = x.shape[0]
    for p in sae.parameters():
        p.grad = None
    with torch.enable_grad():
        pre = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
        acts = torch.relu(pre)
        z = sae.reference_codes(acts)
        x_hat = z @ sae.W_dec + sae.b_dec
        mse = (x_hat - x).pow(2).sum(-1).mean()
        loss = mse
        if sae.uses_l1:
            loss = loss + cfg.l1_coeff * (z * sae.W_dec.norm(dim=1)).sum(-1).mean()
        aux = torch.zeros((), device=x.device)
        if sae.uses_aux and dead is not None and bool(dead.any()) and cfg.aux_coeff > 0:
            residual = (x - x_hat).detach()
            dead_idx = dead.nonzero().squeeze(1)
            acts_dead = acts[:, dead_idx]
            top = acts_dead.topk(min(cfg.aux_k, dead_idx.numel()), dim=1, sorted=True)
            z_aux = torch.zeros_like(acts_dead).scatter(1, top.indices, top.values)
            x_aux = z_aux @ sae.W_dec[dead_idx]
            aux = cfg.aux_coeff * (x_aux - residual).pow(2).sum(-1).mean()
            loss = loss + aux
        loss.backward()
    with torch.no_grad():
        err = x_hat - x
        total_var = (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)
        return StepStats(
            loss=float(loss),
            mse=float(mse),
            aux=float(aux),
            explained_variance=float(1.0 - err.pow(2).sum() / total_var),
            l0=float((z > 0).sum()) / b,
            fired=(z > 0).any(0),
        )
