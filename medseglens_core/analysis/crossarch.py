"""Cross-architecture diff: match SegFormer-SAE latents to U-Net-SAE latents by WHERE they fire.

The two SAEs live in different activation spaces, so decoders cannot be compared. Instead both
models see the same prepared slices; each latent's activation map is resampled to one common
``grid x grid`` per slice (bilinear, antialiased), flattened over (slice, y, x), and latents are
matched one-to-one (Hungarian) by the Pearson correlation of those maps.

Significance: a permutation null that shuffles the SLICE correspondence between the two
models (the spatial layout within a slice is kept, so latents that merely share a position
prior, e.g. "brain edge", do not look significant). Each permutation re-runs the full
Hungarian matching; the max-statistic p-value of a pair is
``(1 + #{perms whose best matched correlation >= r}) / (1 + n_perm)`` (family-wise control over
all pairs). The shared-backbone fraction is the number of pairs with ``p < alpha`` over the
number of live latents of the smaller SAE.
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
from medseglens_core.analysis.stats import hungarian
from medseglens_core.errors import InvalidInput


@dataclass(frozen=True)
class MatchedPair:
    latent_a: int
    latent_b: int
    corr: float
    p: float
    region_a: str
    region_b: str


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
    null_max: float  # 95th percentile of the null's best matched correlation

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["n_significant"] = sum(p.p < self.alpha for p in self.pairs)
        return d


def _standardise(x: torch.Tensor) -> torch.Tensor:
    x = x - x.mean(dim=1, keepdim=True)
    return x / x.norm(dim=1, keepdim=True).clamp(min=1e-12)


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
) -> CrossArchAlignment:
    """Hungarian matching of latent maps ``(S, d_a, g, g)`` vs ``(S, d_b, g, g)`` on the same slices.

    Latents that never fire on these slices are left out (their correlation is undefined). Of the
    live latents, at most ``max_latents`` per SAE with the largest total activation are matched
    (None: all); each permutation costs a ``d_a x N x d_b`` product plus a Hungarian solve, so
    this bounds the run time.
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
    flat_a = maps_a.float().permute(1, 0, 2, 3).reshape(maps_a.shape[1], -1)
    flat_b = maps_b.float().permute(1, 0, 2, 3).reshape(maps_b.shape[1], s, -1)
    alive_a = torch.nonzero(flat_a.std(dim=1) > 0).flatten()
    alive_b = torch.nonzero(flat_b.flatten(1).std(dim=1) > 0).flatten()
    if max_latents is not None:
        alive_a = alive_a[torch.argsort(-flat_a[alive_a].sum(dim=1), stable=True)[:max_latents]].sort().values
        alive_b = (
            alive_b[torch.argsort(-flat_b[alive_b].flatten(1).sum(dim=1), stable=True)[:max_latents]]
            .sort()
            .values
        )
    if len(alive_a) == 0 or len(alive_b) == 0:
        raise InvalidInput("no latent fires on these slices in one of the SAEs; use more or other slices")
    a = _standardise(flat_a[alive_a])
    b3 = flat_b[alive_b]
    b = _standardise(b3.reshape(len(alive_b), -1))
    match = hungarian((a @ b.T).numpy())
    g = torch.Generator().manual_seed(seed)
    null_best = np.empty(n_perm)
    b_std = b.reshape(len(alive_b), s, -1)
    for i in range(n_perm):
        perm = torch.randperm(s, generator=g)
        null = (a @ b_std[:, perm].reshape(len(alive_b), -1).T).numpy()
        null_best[i] = hungarian(null).score[0]
    pairs = []
    for r, c, corr in zip(match.rows, match.cols, match.score, strict=True):
        ja, jb = int(alive_a[r]), int(alive_b[c])
        p = (1 + int((null_best >= corr).sum())) / (1 + n_perm)
        pairs.append(
            MatchedPair(
                ja,
                jb,
                float(corr),
                float(p),
                regions_a[ja] if regions_a else "",
                regions_b[jb] if regions_b else "",
            )
        )
    n_sig = sum(p.p < alpha for p in pairs)
    return CrossArchAlignment(
        pairs=pairs,
        n_alive_a=len(alive_a),
        n_alive_b=len(alive_b),
        n_slices=s,
        n_perm=n_perm,
        alpha=alpha,
        shared_fraction=n_sig / min(len(alive_a), len(alive_b)),
        null_max=float(np.quantile(null_best, 0.95)),
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
    mass = region_mass(maps, fractions, torch.ones(maps.shape[0], *maps.shape[-2:], dtype=torch.bool))
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
    blocks_a, blocks_b, fracs = [], [], []
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
        if progress:
            progress({"stage": "crossarch", "case": case.case_id})
    maps_a, maps_b, frac = torch.cat(blocks_a), torch.cat(blocks_b), torch.cat(fracs)
    return align_maps(
        maps_a,
        maps_b,
        n_perm=n_perm,
        seed=seed,
        alpha=alpha,
        regions_a=_dominant_regions(maps_a, frac),
        regions_b=_dominant_regions(maps_b, frac),
    )
