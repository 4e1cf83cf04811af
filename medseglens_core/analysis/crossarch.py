"""Cross-architecture diff: match SegFormer-SAE latents to U-Net-SAE latents by WHERE they fire.

The two SAEs live in different activation spaces, so decoders cannot be compared. Instead both
models see the same prepared slices; each latent's activation map is resampled to one common
``grid x grid`` per slice (bilinear, antialiased) and compared only INSIDE THE BRAIN.

Maps are centred per position before correlating: from each latent's map on each slice we
subtract that latent's mean map over the slices (per grid position, brain positions only), then
scale the residual to unit norm over all (slice, position) entries. What is left is where the
latent fires MORE or LESS than it usually does at that position, e.g. on this slice's tumour;
two latents that merely share a position prior (brain edge, centre bias) no longer correlate.
Latents firing on fewer than ``min_slices`` slices are left out. Latents are matched one-to-one
(Hungarian) by the Pearson correlation of the centred maps.

Significance: a permutation null that shuffles the SLICE correspondence between the two models.
For a matched pair ``(i, j)`` the null statistic of one permutation is the best correlation
either latent reaches with ANY partner (``max(max_j' C(i, j'), max_i' C(i', j))``), so choosing
the best partner out of hundreds is paid for; ``p = (1 + #{perms: null >= r}) / (1 + n_perm)``.
Benjamini-Hochberg over the matched pairs gives ``q``. The shared-backbone fraction is the
number of pairs with ``q < alpha`` over the live latents of the smaller SAE.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medseglens_core.analysis.casepass import load_if_path, prepare_for_analysis
from medseglens_core.analysis.encode import REGION_NAMES, SAELike, encode_maps, region_fractions, region_mass
from medseglens_core.analysis.stats import benjamini_hochberg, hungarian
from medseglens_core.errors import InvalidInput


@dataclass(frozen=True)
class MatchedPair:
    latent_a: int
    latent_b: int
    corr: float
    p: float
    region_a: str
    region_b: str
    q: float = 1.0  # Benjamini-Hochberg over the matched pairs


@dataclass(frozen=True)
class CrossArchAlignment:
    """Result of :func:`align_maps`; ``pairs`` sorted by descending correlation."""

    pairs: list[MatchedPair]
    n_alive_a: int
    n_alive_b: int
    n_slices: int
    n_perm: int
    alpha: float
    shared_fraction: float
    null_max: float  # 95th percentile over pairs and permutations of the pair null statistic

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["n_significant"] = sum(p.q < self.alpha for p in self.pairs)
        return d


def centre_maps(maps: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
    """Per-position-centred, unit-norm latent maps: ``(S, d, g, g)`` -> ``(d, S, g*g)`` float32.

    ``brain (S, g, g)`` bool: entries outside it are 0. Each latent's mean over slices at each
    position (over the slices where that position is brain) is subtracted, then each latent is
    scaled to unit norm (a latent with no residual stays all-zero).
    """
    s, d = maps.shape[:2]
    m = brain.reshape(s, -1).float()  # (S, P)
    x = maps.float().permute(1, 0, 2, 3).reshape(d, s, -1) * m  # (d, S, P)
    mean_map = x.sum(dim=1, keepdim=True) / m.sum(dim=0).clamp(min=1)
    r = (x - mean_map) * m
    return r / r.flatten(1).norm(dim=1).clamp(min=1e-12)[:, None, None]


def _alive(maps: torch.Tensor, brain: torch.Tensor, min_slices: int, cap: int | None) -> torch.Tensor:
    """Latents firing inside the brain on >= ``min_slices`` slices; the ``cap`` most active."""
    inside = maps.float() * brain[:, None].float()
    on_slices = (inside.flatten(2).amax(dim=2) > 0).sum(dim=0)  # (d,)
    alive = torch.nonzero(on_slices >= min_slices).flatten()
    if cap is not None and len(alive) > cap:
        total = inside.sum(dim=(0, 2, 3))[alive]
        alive = alive[torch.argsort(-total, stable=True)[:cap]].sort().values
    return alive


def align_maps(
    maps_a: torch.Tensor,
    maps_b: torch.Tensor,
    *,
    n_perm: int = 200,
    seed: int = 0,
    alpha: float = 0.05,
    regions_a: list[str] | None = None,
    regions_b: list[str] | None = None,
    max_latents: int | None = 256,
    brain: torch.Tensor | None = None,
    min_slices: int = 3,
) -> CrossArchAlignment:
    """Hungarian matching of latent maps ``(S, d_a, g, g)`` vs ``(S, d_b, g, g)`` on the same slices.

    ``brain (S, g, g)`` bool: the common-grid brain mask (default: every position). Latents
    firing in the brain on fewer than ``min_slices`` slices are left out; of the rest, at most
    ``max_latents`` per SAE with the largest total activation are matched (None: all). Each
    permutation costs one ``d_a x (S g g) x d_b`` product.
    ``regions_a/b``: optional dominant-region name per latent (length ``d_a`` / ``d_b``).
    """
    if maps_a.ndim != 4 or maps_b.ndim != 4 or maps_a.shape[0] != maps_b.shape[0]:
        raise InvalidInput(
            f"maps must be (S, d, g, g) on the same S slices; got {tuple(maps_a.shape)}, {tuple(maps_b.shape)}"
        )
    if maps_a.shape[-2:] != maps_b.shape[-2:]:
        raise InvalidInput("maps must share one grid; resample both with common_grid_maps")
    if n_perm < 1:
        raise InvalidInput(f"n_perm must be >= 1; got {n_perm}")
    s = maps_a.shape[0]
    if brain is None:
        brain = torch.ones(s, *maps_a.shape[-2:], dtype=torch.bool)
    if tuple(brain.shape) != (s, *maps_a.shape[-2:]):
        raise InvalidInput(
            f"brain mask must be (S, g, g) = {(s, *maps_a.shape[-2:])}; got {tuple(brain.shape)}"
        )
    alive_a = _alive(maps_a, brain, min_slices, max_latents)
    alive_b = _alive(maps_b, brain, min_slices, max_latents)
    if len(alive_a) == 0 or len(alive_b) == 0:
        raise InvalidInput("no latent fires on these slices in one of the SAEs; use more or other slices")
    a = centre_maps(maps_a[:, alive_a], brain).flatten(1)  # (n_a, S*P)
    b3 = centre_maps(maps_b[:, alive_b], brain)  # (n_b, S, P)
    match = hungarian((a @ b3.flatten(1).T).numpy())
    g = torch.Generator().manual_seed(seed)
    rows, cols = torch.as_tensor(match.rows), torch.as_tensor(match.cols)
    hits = torch.zeros(len(rows))
    null_stats = []
    for _ in range(n_perm):
        c = a @ b3[:, torch.randperm(s, generator=g)].flatten(1).T
        stat = torch.maximum(c.amax(dim=1)[rows], c.amax(dim=0)[cols])
        hits += (stat >= torch.as_tensor(match.score, dtype=stat.dtype) - 1e-6).float()
        null_stats.append(stat)
    p = ((1.0 + hits) / (1.0 + n_perm)).numpy()
    q = benjamini_hochberg(p)
    pairs = [
        MatchedPair(
            int(alive_a[r]),
            int(alive_b[c]),
            float(corr),
            float(p[k]),
            regions_a[int(alive_a[r])] if regions_a else "",
            regions_b[int(alive_b[c])] if regions_b else "",
            float(q[k]),
        )
        for k, (r, c, corr) in enumerate(zip(match.rows, match.cols, match.score, strict=True))
    ]
    n_sig = int((q < alpha).sum())
    return CrossArchAlignment(
        pairs=pairs,
        n_alive_a=len(alive_a),
        n_alive_b=len(alive_b),
        n_slices=s,
        n_perm=n_perm,
        alpha=alpha,
        shared_fraction=n_sig / min(len(alive_a), len(alive_b)),
        null_max=float(np.quantile(torch.stack(null_stats).numpy(), 0.95)),
    )


def common_grid_maps(sae: SAELike, h: torch.Tensor, grid: int = 24) -> torch.Tensor:
    """Latent maps of hook activations ``h (S, C, h, w)`` resampled to ``(S, d_sae, grid, grid)``."""
    maps = encode_maps(sae, h)
    if tuple(maps.shape[-2:]) == (grid, grid):
        return maps
    return F.interpolate(maps, size=(grid, grid), mode="bilinear", align_corners=False, antialias=True).clamp(
        min=0
    )


def _dominant_regions(maps: torch.Tensor, fractions: torch.Tensor) -> list[str]:
    """Per latent, the region with the highest mean activation per token (not total mass)."""
    mass = region_mass(maps, fractions, torch.ones(maps.shape[0], *maps.shape[-2:], dtype=torch.bool))
    mass = mass / np.maximum(fractions.sum(dim=(0, 2, 3)).double().numpy(), 1e-12)
    names = [REGION_NAMES[int(k)] for k in mass.argmax(axis=1)]
    return [n if mass[j].sum() > 0 else "none" for j, n in enumerate(names)]


def crossarch_from_cases(
    model_a: Any,
    sae_a: SAELike,
    hook_a: str,
    size_a: int,
    model_b: Any,
    sae_b: SAELike,
    hook_b: str,
    size_b: int,
    cases: Iterable[Any],
    *,
    grid: int = 24,
    max_slices: int = 96,
    n_perm: int = 200,
    max_latents: int | None = 256,
    seed: int = 0,
    alpha: float = 0.05,
    progress: Callable[[dict], None] | None = None,
) -> CrossArchAlignment:
    """Run both models on the same slices of ``cases`` and align their SAE latents.

    At most ``max_slices`` slices are used: ``max_slices // n_cases`` per case, evenly spaced
    over the middle 80% of each case's brain slices (deterministic).
    """
    cases = list(cases)
    if not cases:
        raise InvalidInput("cross-architecture alignment needs at least one case")
    per_case = max(1, max_slices // len(cases))
    blocks_a, blocks_b, fracs, brains = [], [], [], []
    for item in cases:
        case = load_if_path(item)
        _, sl_a, brain_a, lab_a = prepare_for_analysis(case, size_a)
        _, sl_b, _, _ = prepare_for_analysis(case, size_b)
        z = sl_a.shape[0]
        idx = torch.linspace(0.1 * (z - 1), 0.9 * (z - 1), min(per_case, z)).round().long().unique()
        with torch.no_grad():
            blocks_a.append(common_grid_maps(sae_a, model_a.run_prefix(sl_a[idx], hook_a).h, grid))
            blocks_b.append(common_grid_maps(sae_b, model_b.run_prefix(sl_b[idx], hook_b).h, grid))
        lab = (
            lab_a[idx] if lab_a is not None else torch.zeros(len(idx), *brain_a.shape[1:], dtype=torch.uint8)
        )
        fracs.append(region_fractions(lab, brain_a[idx], (grid, grid)))
        brains.append(F.adaptive_avg_pool2d(brain_a[idx].float()[:, None], (grid, grid))[:, 0] >= 0.5)
        if progress:
            progress({"stage": "crossarch", "case": case.case_id})
    maps_a, maps_b, frac = torch.cat(blocks_a), torch.cat(blocks_b), torch.cat(fracs)
    return align_maps(
        maps_a,
        maps_b,
        brain=torch.cat(brains),
        max_latents=max_latents,
        n_perm=n_perm,
        seed=seed,
        alpha=alpha,
        regions_a=_dominant_regions(maps_a, frac),
        regions_b=_dominant_regions(maps_b, frac),
    )
