"""Steering specs fitted in SAE-latent space: which latents to ``add`` to, and by how much.

A steering spec adds ``alpha * c_j`` to latent ``j`` for a set ``L`` of latents, on the hook
tokens near the model's own predicted tumour core (``scope=predicted_region``, region TC,
dilated by ``dilation`` voxels). On every token in scope the hook activation moves by the same
vector ``alpha * sum_j c_j (dec(e_j) - dec(0))`` -- a direction spanned by SAE decoder columns,
so the edit is a readable list of latents and strengths.

The coefficients ``c`` come from a few gradient steps on a class-weighted cross-entropy of the
edited network's logits against labels on model-grid slices (:func:`fit_steering`); the latents
``L`` are those with the largest gradient at ``c = 0`` (:func:`select_latents`). Protocols pass
different cases and labels: the oracle one failure and its ground truth; the blind protocol
its calibration cases, plus source-cohort cases whose label keeps the edit from harming the
source.

Shapes: ``S`` model input side; ``h, w`` hook grid; ``C`` hook channels; ``n`` packed slices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medseglens_core.interventions.cache import PrefixCache
from medseglens_core.interventions.spec import Edit, InterventionSpec
from medseglens_core.models.base import Prefix

#: Cross-entropy class weights (background, NCR, SNFH, ET) when fitting: the missed oedema is
#: the minority class the fit must not ignore.
CLASS_WEIGHTS = (1.0, 1.0, 3.0, 1.0)


@dataclass
class Pack:
    """Slices of one volume that a steering edit touches, stacked for gradient steps.

    Attributes:
        prefix: the cached prefix of those ``n`` slices (``h`` ``(n, C, h, w)``).
        in_scope: ``(n, 1, h, w)`` float, 1 on tokens the edit touches.
        target: ``(n, S, S)`` int64 class per pixel the fit aims at.
        weight: this volume's weight in the loss.
    """

    prefix: Prefix
    in_scope: torch.Tensor
    target: torch.Tensor
    weight: float = 1.0


def pack(
    cache: PrefixCache,
    target_slices: torch.Tensor,
    *,
    region: str = "TC",
    dilation: int = 6,
    stride: int = 2,
    weight: float = 1.0,
) -> Pack | None:
    """Every ``stride``-th slice holding a token in scope, with labels ``target_slices[k]``
    (``(Z, S, S)``, model grid). None when no token is in scope or the cache is not batch-first."""
    tmask = cache.region_tokens(region, dilation)
    h, w = cache.hook_shape
    ks = np.unique(np.flatnonzero(tmask) // (h * w))[:: max(1, stride)].tolist()
    if not ks:
        return None
    rows = [(p, k - start) for start, stop, p in cache.chunks for k in range(start, stop)]
    picks = [rows[k] for k in ks]
    first = picks[0][0]
    if any(c.ndim == 0 or c.shape[0] != p.h.shape[0] for p, _ in picks for c in p.cache):
        return None
    prefix = Prefix(
        hook=first.hook,
        h=torch.stack([p.h[r] for p, r in picks]),
        cache=tuple(torch.stack([p.cache[j][r] for p, r in picks]) for j in range(len(first.cache))),
        out_size=first.out_size,
    )
    scope = torch.from_numpy(tmask.reshape(-1, h, w)[ks]).float()[:, None]
    return Pack(prefix, scope, torch.as_tensor(target_slices)[ks].long(), weight)


def decoder_directions(sae: Any, latents: Sequence[int]) -> torch.Tensor:
    """``(m, C)`` hook-space change of adding 1 to each latent: ``dec(e_j) - dec(0)``."""
    d_sae = int(sae.W_dec.shape[0])
    eye = torch.zeros(len(latents) + 1, d_sae, dtype=sae.W_dec.dtype, device=sae.W_dec.device)
    for i, j in enumerate(latents):
        eye[i + 1, j] = 1.0
    with torch.no_grad():
        out = sae.decode(eye)
    return (out[1:] - out[:1]).float().cpu()


def _loss(model: Any, packs: Sequence[Pack], delta: torch.Tensor) -> torch.Tensor:
    """Weighted mean class-weighted cross-entropy of the packs with ``delta`` ``(C,)`` added in scope."""
    weights = torch.tensor(CLASS_WEIGHTS)
    total = torch.zeros(())
    for p in packs:
        h = p.prefix.h + delta[None, :, None, None].to(p.prefix.h.dtype) * p.in_scope
        logits = model.run_suffix(p.prefix, h)
        total = total + p.weight * F.cross_entropy(logits.float(), p.target, weight=weights)
    return total / max(sum(p.weight for p in packs), 1e-12)


def select_latents(model: Any, sae: Any, packs: Sequence[Pack], m: int) -> list[int]:
    """The ``m`` latents whose ``add`` direction most reduces the loss at zero edit (largest
    ``|dL/dc_j|``, ``c_j`` the amount added to latent ``j``), most useful first."""
    c = torch.zeros(int(sae.W_dec.shape[0]), requires_grad=True)
    dirs = decoder_directions(sae, list(range(int(sae.W_dec.shape[0]))))
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(_loss(model, packs, c @ dirs), c)
    order = torch.argsort(-grad.abs(), stable=True)[:m]
    return [int(j) for j in order]


def fit_steering(
    model: Any,
    sae: Any,
    packs: Sequence[Pack],
    latents: Sequence[int],
    *,
    steps: int = 12,
    lr: float = 0.05,
    init: np.ndarray | None = None,
) -> np.ndarray:
    """Coefficients ``c`` ``(m,)`` (latent code units) minimising the packs' loss, by Adam.

    Adam runs on unit-norm decoder directions with step ``lr`` x the mean hook-token norm of
    the packs' in-scope tokens, so one setting fits any hook's scale; it starts from ``init``
    (code units) or zero (no edit).
    """
    dirs = decoder_directions(sae, latents)
    norms = dirs.norm(dim=1).clamp(min=1e-12)
    unit = dirs / norms[:, None]
    tok = [p.prefix.h.float().norm(dim=1, keepdim=True)[p.in_scope > 0] for p in packs]
    h_norm = float(torch.cat(tok).mean()) if tok else 1.0
    start = torch.zeros(len(latents)) if init is None else torch.as_tensor(init).float() * norms
    c = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([c], lr=lr * h_norm)
    with torch.enable_grad():
        for _ in range(steps):
            loss = _loss(model, packs, c @ unit)
            opt.zero_grad()
            loss.backward()
            opt.step()
    return (c.detach() / norms).numpy().astype(np.float64)


def steering_spec(
    latents: Sequence[int], coeffs: np.ndarray, alpha: float, *, region: str = "TC", dilation: int = 6
) -> InterventionSpec:
    """``add alpha * c_j`` to each latent ``j`` on the predicted ``region`` dilated by ``dilation``."""
    edits = [
        Edit(
            latent=int(j),
            op="add",
            value=round(float(alpha * c), 5),
            scope="predicted_region",
            region=region,
            dilation=dilation,
        )
        for j, c in zip(latents, coeffs, strict=True)
        if abs(alpha * c) > 1e-6
    ]
    return InterventionSpec(edits=edits)


def _pack_codes(sae: Any, p: Pack, latents: Sequence[int]) -> torch.Tensor:
    """Codes ``(n, m, h, w)`` of the pack's tokens for ``latents`` (computed once per pack)."""
    memo: dict = p.__dict__.setdefault("_codes", {})
    key = tuple(latents)
    if key not in memo:
        n, c, h, w = p.prefix.h.shape
        with torch.no_grad():
            z = sae.encode(
                p.prefix.h.permute(0, 2, 3, 1).reshape(-1, c).to(sae.W_dec.device, sae.W_dec.dtype)
            )
        memo[key] = z[:, list(latents)].float().cpu().reshape(n, h, w, -1).permute(0, 3, 1, 2)
    return memo[key]


def _scaled_loss(model: Any, sae: Any, packs: Sequence[Pack], latents, dirs, s: torch.Tensor) -> torch.Tensor:
    """Loss with each latent's code multiplied by ``1 + s_j`` on the tokens in scope."""
    weights = torch.tensor(CLASS_WEIGHTS)
    total = torch.zeros(())
    for p in packs:
        z = _pack_codes(sae, p, latents)  # (n, m, h, w)
        delta = torch.einsum("nmhw,m,mc->nchw", z, s, dirs) * p.in_scope
        logits = model.run_suffix(p.prefix, p.prefix.h + delta.to(p.prefix.h.dtype))
        total = total + p.weight * F.cross_entropy(logits.float(), p.target, weight=weights)
    return total / max(sum(p.weight for p in packs), 1e-12)


def fit_scaling(
    model: Any, sae: Any, packs: Sequence[Pack], m: int, *, steps: int = 12, lr: float = 0.5
) -> tuple[list[int], np.ndarray]:
    """Per-latent gains: ``(latents, factors)`` where scaling latent ``j``'s code by ``factors_j``
    on the tokens in scope minimises the packs' loss. The ``m`` latents are those with the
    largest ``|dL/ds_j|`` at no edit; Adam on ``s = factor - 1`` with step ``lr``; factors >= 0."""
    d_sae = int(sae.W_dec.shape[0])
    every = list(range(d_sae))
    dirs = decoder_directions(sae, every)
    s0 = torch.zeros(d_sae, requires_grad=True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(_scaled_loss(model, sae, packs, every, dirs, s0), s0)
    latents = [int(j) for j in torch.argsort(-grad.abs(), stable=True)[:m]]
    for p in packs:
        p.__dict__.pop("_codes", None)
    dirs = dirs[latents]
    s = torch.zeros(len(latents), requires_grad=True)
    opt = torch.optim.Adam([s], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            loss = _scaled_loss(model, sae, packs, latents, dirs, s)
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                s.clamp_(min=-1.0)
    return latents, (1.0 + s.detach()).numpy().astype(np.float64)


def scaling_spec(
    latents: Sequence[int], factors: np.ndarray, alpha: float, *, region: str = "TC", dilation: int = 6
) -> InterventionSpec:
    """``scale`` each latent by ``1 + alpha * (factor_j - 1)`` on the predicted region dilated."""
    edits = []
    for j, f in zip(latents, factors, strict=True):
        value = max(0.0, 1.0 + alpha * (float(f) - 1.0))
        if abs(value - 1.0) > 1e-4:
            edits.append(
                Edit(
                    latent=int(j),
                    op="scale",
                    value=round(value, 5),
                    scope="predicted_region",
                    region=region,
                    dilation=dilation,
                )  # fmt: skip
            )
    return InterventionSpec(edits=edits)
