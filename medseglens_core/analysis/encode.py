"""Encoding hook activations into SAE latent maps, and the token-level masks that go with them.

A hook activation ``h`` has shape ``(B, C, h, w)``; each spatial position is one token
(``h.permute(0, 2, 3, 1).reshape(-1, C)``, see docs/ARCHITECTURE.md). Latent maps are the SAE
codes put back on that grid: ``(B, d_sae, h, w)``.

:func:`encode_fast` encodes in float32 arithmetic (for ranking many tokens x latents quickly);
:func:`exact_columns` then gives the exact ``sae.encode`` codes of the few latents shown.

Token masks say which tokens count as "brain" (statistics are taken over brain tokens only, so
a latent that fires on the empty background around the head does not dilute or inflate the
per-case numbers). Token region fractions ``(B, 4, h, w)`` give, for each token, the fraction
of its receptive patch that is healthy brain / NCR / SNFH / ET on the model's input grid.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from medseglens_core.errors import InvalidInput

#: Region axis of every region-association array: index 0 is healthy brain, then labels 1..3.
REGION_NAMES: tuple[str, ...] = ("healthy", "NCR", "SNFH", "ET")
LABEL_INDEX: dict[str, int] = {"NCR": 1, "SNFH": 2, "ET": 3}


class SAELike(Protocol):
    """What the analysis needs from an SAE (``medseglens_core.sae.SAE`` satisfies it)."""

    W_dec: torch.Tensor

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...
    def decode(self, z: torch.Tensor) -> torch.Tensor: ...


class ModelLike(Protocol):
    """What the analysis needs from a segmentation model (``SegModel`` satisfies it)."""

    default_hook: str

    def run_prefix(self, x: torch.Tensor, hook: str) -> Any: ...
    def run_suffix(self, prefix: Any, h: torch.Tensor) -> torch.Tensor: ...


def to_tokens(h: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w)`` -> ``(B*h*w, C)`` tokens, position-major within each slice."""
    if h.ndim != 4:
        raise InvalidInput(f"hook activation must be (B, C, h, w); got shape {tuple(h.shape)}")
    return h.permute(0, 2, 3, 1).reshape(-1, h.shape[1])


def from_tokens(t: torch.Tensor, b: int, hh: int, ww: int) -> torch.Tensor:
    """Inverse of :func:`to_tokens`: ``(B*h*w, D)`` -> ``(B, D, h, w)``."""
    return t.reshape(b, hh, ww, t.shape[1]).permute(0, 3, 1, 2)


@torch.no_grad()
def encode_maps(sae: SAELike, h: torch.Tensor, chunk_tokens: int = 65536) -> torch.Tensor:
    """SAE codes as latent maps: ``h (B, C, h, w)`` -> ``(B, d_sae, h, w)`` float32.

    Tokens are encoded in chunks of ``chunk_tokens`` so memory stays bounded; the SAE's
    inference encode is batch-independent so chunking does not change the result.
    """
    b, _, hh, ww = h.shape
    tokens = to_tokens(h.float())
    codes = [sae.encode(tokens[i : i + chunk_tokens]) for i in range(0, tokens.shape[0], chunk_tokens)]
    return from_tokens(torch.cat(codes, dim=0).float(), b, hh, ww)


def masked_tokens(h: torch.Tensor | Sequence[torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
    """Tokens of ``h (B, C, h, w)`` (or its per-batch pieces, in order) where ``mask (B, h, w)`` is True.

    Returns ``(n_true, C)`` float32 in :func:`to_tokens` order, on ``h``'s device.
    """
    pieces = [h] if torch.is_tensor(h) else list(h)
    if pieces[0].device.type != "cpu":
        return to_tokens(torch.cat(pieces).float())[mask.reshape(-1).to(pieces[0].device)]
    # numpy: one copy, no thread-pool round trips (this runs after the network, per case)
    tokens = np.concatenate(
        [p.detach().float().numpy().transpose(0, 2, 3, 1).reshape(-1, p.shape[1]) for p in pieces]
    )
    return torch.from_numpy(np.ascontiguousarray(tokens[mask.reshape(-1).numpy()], dtype=np.float32))


@torch.no_grad()
def encode_fast(sae: SAELike, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Codes of ``tokens (N, d_in)`` in float32 arithmetic: ``(codes (N, d_sae), pre-activations | None)``.

    For a :class:`~medseglens_core.sae.base.SAE` this is ``SAE.pre_acts``'s formula and the SAE's
    own activation with a float32 matmul instead of float64 (about 2.5x faster on the CPU): codes
    differ from ``sae.encode`` by float32 rounding (~1e-6 relative), and a pre-activation that
    close to a JumpReLU threshold may land on the other side. Use it to rank latents; take the
    codes that are shown from :func:`exact_columns`. Other SAEs are encoded exactly (pre is None).
    """
    from medseglens_core.sae.base import SAE

    if not isinstance(sae, SAE):
        return sae.encode(tokens).float(), None
    x = _centred(sae, tokens, torch.float32)
    pre = torch.addmm(sae.b_enc, x, sae.W_enc)
    return sae.activation(pre), pre


def _centred(sae: Any, tokens: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tokens * sae.scale - sae.b_dec`` in ``dtype`` on the SAE's device (``SAE.pre_acts``'s input).

    On the CPU in numpy: IEEE-identical, and no round trip through torch's thread pool for two
    small elementwise ops.
    """
    device = sae.W_enc.device
    if device.type != "cpu" or tokens.device.type != "cpu":
        return tokens.to(device, dtype) * sae.scale - sae.b_dec.to(dtype)
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    x = tokens.detach().numpy().astype(np_dtype) * np_dtype(sae.scale)
    return torch.from_numpy(x - sae.b_dec.detach().numpy().astype(np_dtype))


@torch.no_grad()
def exact_columns(sae: SAELike, tokens: torch.Tensor, pre: torch.Tensor, latents: list[int]) -> torch.Tensor:
    """``sae.encode(tokens)[:, latents]`` given :func:`encode_fast`'s float32 pre-activations ``pre``.

    ``pre`` is overwritten (its ``latents`` columns become exact).

    Only the ``latents`` columns are recomputed in float64 (as ``SAE.pre_acts`` does); the
    activation then sees the full row, so per-token activations (JumpReLU, ReLU) give exactly the
    columns of ``sae.encode``; a TopK row takes its membership from the mixed row (it can differ
    only for a pre-activation tied with the k-th to float32 precision).
    """
    cols = torch.as_tensor(latents, dtype=torch.long, device=pre.device)
    x = _centred(sae, tokens, torch.float64)
    exact = torch.addmm(sae.b_enc[cols].double(), x, sae.W_enc[:, cols].double()).float()
    pre[:, cols] = exact
    return sae.activation(pre)[:, cols]


def resolve_hook(model: ModelLike, hook: str | None, card: dict | None = None) -> str:
    """The hook to read: explicit ``hook``, else the card's ``hook``/``default_hook``, else the model's."""
    if hook:
        return hook
    if card:
        for key in ("hook", "default_hook"):
            if card.get(key):
                return str(card[key])
    return str(model.default_hook)


def iter_prefix(
    model: ModelLike, slices: torch.Tensor, hook: str, batch_size: int = 16
) -> Iterator[tuple[slice, Any]]:
    """Run ``model.run_prefix`` over ``slices (Z, 4, H, W)`` in batches; yields ``(z_range, prefix)``."""
    with torch.no_grad():
        for i in range(0, slices.shape[0], batch_size):
            yield (
                slice(i, min(i + batch_size, slices.shape[0])),
                model.run_prefix(slices[i : i + batch_size], hook),
            )


def brain_token_mask(brain: torch.Tensor, hw: tuple[int, int], min_fraction: float = 0.5) -> torch.Tensor:
    """Which tokens are brain: ``brain (Z, H, W)`` bool on the model input grid -> ``(Z, h, w)`` bool.

    A token counts as brain when at least ``min_fraction`` of its patch is brain (area pooling).
    """
    z, hh, ww = brain.shape
    if hh % hw[0] == 0 and ww % hw[1] == 0 and brain.device.type == "cpu":
        # equal patches: a plain mean (the same values as area pooling, several times faster)
        patches = brain.numpy().view(np.uint8).reshape(z, hw[0], hh // hw[0], hw[1], ww // hw[1])
        count = patches.sum(axis=4, dtype=np.int32).sum(axis=2)  # brain pixels per patch (exact)
        frac = count.astype(np.float32) / np.float32(patches.shape[2] * patches.shape[4])
        return torch.from_numpy(frac >= min_fraction)
    else:
        frac = F.adaptive_avg_pool2d(brain.float()[:, None], hw)[:, 0]
    return frac >= min_fraction


def input_brain_mask(slices: torch.Tensor) -> torch.Tensor:
    """Brain mask ``(Z, H, W)`` inferred from the prepared input: any modality non-zero.

    Used only when the prepared case carries no model-grid brain mask; preprocessing z-scores
    inside the brain and leaves zeros outside, so non-zero input marks the brain.
    """
    if slices.device.type == "cpu":  # numpy's reduction is ~4x faster than torch's here
        return torch.from_numpy(np.any(slices.detach().numpy() != 0, axis=1))
    return (slices != 0).any(dim=1)


def region_fractions(label_slices: torch.Tensor, brain: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Per-token region fractions ``(Z, 4, h, w)`` from model-grid labels ``(Z, H, W)`` in {0..3}.

    Channel 0 is healthy brain (label 0 inside ``brain``), channels 1..3 are NCR/SNFH/ET.
    Background outside the brain counts in no channel, so a token's fractions sum to <= 1.
    """
    lab = label_slices.long()
    onehot = torch.stack(
        [(lab == 0) & brain.bool(), lab == 1, lab == 2, lab == 3],
        dim=1,
    ).float()
    return F.adaptive_avg_pool2d(onehot, hw)


def region_mass(maps: torch.Tensor, fractions: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Activation mass per latent and region: ``(d_sae, 4)`` float64.

    ``maps (Z, d_sae, h, w)``, ``fractions (Z, 4, h, w)``, ``mask (Z, h, w)`` bool: the sum over
    masked tokens of ``z_j * fraction_r``.
    """
    m = mask.float()[:, None]
    mass = torch.einsum("zdhw,zrhw->dr", maps * m, fractions.float())
    return mass.double().cpu().numpy()
