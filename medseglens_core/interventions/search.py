"""Building blocks of the recovery search: per-case latent profiles, candidate ranking and
the families of candidate specs.

Every statistic is taken over the *neighbourhood* of a case: the tokens whose cell touches the
model's own predicted whole tumour (WT, labels 1-3) dilated by ``dilation`` voxels on the case
grid. That is where a missed oedema would be, and it needs no ground truth.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from medseglens_core.interventions.apply import REGION_LABELS, region_mask
from medseglens_core.interventions.batch import item_codes
from medseglens_core.interventions.cache import PrefixCache
from medseglens_core.interventions.spec import Edit, InterventionSpec


@dataclass
class VolumeItem:
    """One case ready for interventions: its prefix cache, label (``(X, Y, Z)`` or None)."""

    case_id: str
    cohort: str
    cache: PrefixCache
    label: np.ndarray | None
    spacing: tuple[float, float, float]


@dataclass
class Profile:
    """Latent statistics of one case over its neighbourhood tokens; arrays ``(d_sae,)``.

    - ``mean_in``: mean code (zeros included); ``mean_active_in``: mean code where > 0;
    - ``attribution``: sum over neighbourhood tokens of ``z * d log P(region) / dz``, with
      ``log P(region)`` summed over the neighbourhood's pixels (the model's own prediction);
    - ``region_sum`` / ``region_active``: sums over tokens of ``f_t * z`` and ``f_t * [z > 0]``,
      ``f_t`` the fraction of the token's cell the model predicts as the region: their ratio
      is the code a latent takes, when active, where the model sees the region.
    """

    case_id: str
    n_tokens: int
    mean_in: np.ndarray
    mean_active_in: np.ndarray
    attribution: np.ndarray
    region_sum: np.ndarray
    region_active: np.ndarray


def neighbourhood_tokens(cache: PrefixCache, dilation: int) -> np.ndarray:
    """Token mask ``(Z*h*w,)`` of the predicted WT dilated by ``dilation`` voxels."""
    return cache.region_tokens("WT", dilation)


def profile(item: VolumeItem, sae, region: str, dilation: int) -> Profile:
    """Compute the :class:`Profile` of ``item`` (one backward pass per slice batch)."""
    cache = item.cache
    tmask = neighbourhood_tokens(cache, dilation)
    d_sae = int(sae.W_dec.shape[0])
    h, w = cache.hook_shape
    per = h * w
    total, active, attr = torch.zeros(d_sae), torch.zeros(d_sae), torch.zeros(d_sae)
    labels = list(REGION_LABELS[region])
    for start, stop, p in cache.chunks:
        sel = torch.from_numpy(tmask[start * per : stop * per].copy())  # the cache's mask is read-only
        if not bool(sel.any()):
            continue
        tokens = p.h.permute(0, 2, 3, 1).reshape(-1, cache.channels)
        with torch.no_grad():
            z0 = sae.encode(tokens)
        z = z0.clone().requires_grad_(True)
        with torch.enable_grad():
            x_hat = sae.decode(z)
            spliced = (tokens - x_hat.detach()) + x_hat
            h_new = spliced.reshape(stop - start, h, w, cache.channels).permute(0, 3, 1, 2)
            logits = cache.model.run_suffix(p, h_new.contiguous())
            logp = torch.logsumexp(logits[:, labels], 1) - torch.logsumexp(logits, 1)
            pix = sel.reshape(stop - start, 1, h, w).float()
            pix = F.interpolate(pix, size=logits.shape[-2:], mode="nearest")[:, 0]
            (grad,) = torch.autograd.grad((logp * pix).sum(), z)
        zs = z0[sel].detach()
        total += zs.sum(0)
        active += (zs > 0).sum(0)
        attr += (z0 * grad)[sel].sum(0).detach()
    n = int(tmask.sum())
    frac = torch.from_numpy(region_fraction(cache, region)).float()
    codes = item_codes(cache, sae)
    return Profile(
        case_id=item.case_id,
        n_tokens=n,
        mean_in=(total / max(n, 1)).numpy(),
        mean_active_in=(total / active.clamp(min=1)).numpy(),
        attribution=attr.numpy(),
        region_sum=(frac @ codes).numpy(),
        region_active=(frac @ (codes > 0).float()).numpy(),
    )


def region_fraction(cache: PrefixCache, region: str) -> np.ndarray:
    """``(Z*h*w,)`` fraction of each token's case-grid cell that the unedited model predicts as ``region``."""
    tv = cache.token_of_voxel
    ok = tv >= 0
    n = np.bincount(tv[ok], minlength=cache.n_tokens)
    hit = np.bincount(
        tv[ok], weights=region_mask(cache.baseline_labels, region)[ok], minlength=cache.n_tokens
    )
    return hit / np.maximum(n, 1)


@dataclass
class Ranking:
    """Candidate latents, best first, with the numbers that ranked them (lists over ``latents``).

    ``reference`` ``(d_sae,)``: the source cohort's code of each latent, when active, on the
    tokens where the model predicts the region (the value ``clamp`` edits restore).
    """

    latents: list[int]
    score: list[float]
    source_mean: list[float]
    target_mean: list[float]
    source_attribution: list[float]
    reference: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))

    def to_json(self) -> dict:
        return {
            "latents": self.latents,
            "score": self.score,
            "source_mean": self.source_mean,
            "target_mean": self.target_mean,
            "source_attribution": self.source_attribution,
            "reference_code": [float(self.reference[j]) for j in self.latents],
        }


def rank_candidates(source: Sequence[Profile], target: Sequence[Profile], n: int) -> Ranking:
    """Rank latents by the model's reliance on them for the region in the source cohort.

    ``score_j = A_j / max_k A_k`` with ``A`` the mean source attribution (activation x gradient
    of the region's log-probability over the neighbourhood, from predictions only); latents
    with ``A_j <= 0`` are never candidates. The target's mean neighbourhood code is reported
    next to the source's (how much of each latent the target lost).
    """
    attr = np.mean([p.attribution for p in source], axis=0)
    ms = np.mean([p.mean_in for p in source], axis=0)
    mt = np.mean([p.mean_in for p in target], axis=0)
    rel = attr / max(float(attr.max()), 1e-12)
    order = [int(j) for j in np.argsort(-attr, kind="stable") if attr[j] > 0][:n]
    region_sum = np.sum([p.region_sum for p in source], axis=0)
    region_active = np.sum([p.region_active for p in source], axis=0)
    fallback = np.mean([p.mean_active_in for p in source], axis=0)
    reference = np.where(region_active > 0, region_sum / np.maximum(region_active, 1e-12), fallback)
    return Ranking(
        latents=order,
        score=[float(rel[j]) for j in order],
        source_mean=[float(ms[j]) for j in order],
        target_mean=[float(mt[j]) for j in order],
        source_attribution=[float(attr[j]) for j in order],
        reference=reference,
    )


@dataclass(frozen=True)
class FamilyGrid:
    """Multi-latent spec families searched (each over the top ``m`` candidates).

    * ``clamp_active``: latent set to ``b x reference`` where it already fires (self-localising:
      tokens where the latent is silent are untouched);
    * ``clamp_region``: set to ``b x reference`` on the predicted TC dilated by ``d`` voxels;
    * ``scale_region``: multiplied by ``f`` on the predicted TC dilated by ``d`` voxels.
    """

    sizes: tuple[int, ...] = (10, 20, 40)
    clamp_active: tuple[float, ...] = (2.0, 3.0)
    clamp_region: tuple[float, ...] = (1.0, 2.0, 4.0)
    scale_region: tuple[float, ...] = (4.0, 8.0)
    dilations: tuple[int, ...] = (4, 6)


def spec_families(ranking: Ranking, grid: FamilyGrid = FamilyGrid()) -> list[tuple[str, InterventionSpec]]:
    """Named candidate specs over the ranking's top-``m`` latents (see :class:`FamilyGrid`)."""
    out: list[tuple[str, InterventionSpec]] = []
    ref = ranking.reference
    for m in grid.sizes:
        lat = ranking.latents[:m]
        if not lat or (m > len(ranking.latents) and m != grid.sizes[0]):
            continue
        for b in grid.clamp_active:
            edits = [
                Edit(latent=j, op="clamp", value=round(float(b * ref[j]), 5), scope="active") for j in lat
            ]
            out.append((f"clamp-active m={m} b={b}", InterventionSpec(edits=edits)))
        for d in grid.dilations:
            where = {"scope": "predicted_region", "region": "TC", "dilation": d}
            for b in grid.clamp_region:
                edits = [Edit(latent=j, op="clamp", value=round(float(b * ref[j]), 5), **where) for j in lat]
                out.append((f"clamp-TC+{d} m={m} b={b}", InterventionSpec(edits=edits)))
            for f in grid.scale_region:
                edits = [Edit(latent=j, op="scale", value=f, **where) for j in lat]
                out.append((f"scale-TC+{d} m={m} f={f}", InterventionSpec(edits=edits)))
    return out
