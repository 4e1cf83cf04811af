"""Building blocks of the recovery search: per-case latent profiles, candidate ranking,
the pool of candidate edits and a greedy spec search.

Every statistic is taken over the *neighbourhood* of a case: the tokens whose cell touches the
model's own predicted whole tumour (WT, labels 1-3) dilated by ``dilation`` voxels on the case
grid. That is where a missed oedema would be, and it needs no ground truth.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from medseglens_core.interventions.apply import REGION_LABELS, dilate, edited_logits, region_mask
from medseglens_core.interventions.cache import PrefixCache, logits_to_labels
from medseglens_core.interventions.spec import Edit, InterventionSpec
from medseglens_core.metrics import dice


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
      ``log P(region)`` summed over the neighbourhood's pixels (the model's own prediction).
    """

    case_id: str
    n_tokens: int
    mean_in: np.ndarray
    mean_active_in: np.ndarray
    attribution: np.ndarray


def neighbourhood_tokens(cache: PrefixCache, dilation: int) -> np.ndarray:
    """Token mask ``(Z*h*w,)`` of the predicted WT dilated by ``dilation`` voxels."""
    return cache.voxels_to_tokens(dilate(region_mask(cache.baseline_labels, "WT"), dilation))


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
        sel = torch.from_numpy(tmask[start * per : stop * per])
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
    return Profile(
        case_id=item.case_id,
        n_tokens=n,
        mean_in=(total / max(n, 1)).numpy(),
        mean_active_in=(total / active.clamp(min=1)).numpy(),
        attribution=attr.numpy(),
    )


@dataclass
class Ranking:
    """Candidate latents, best first, with the numbers that ranked them (lists over ``latents``)."""

    latents: list[int]
    score: list[float]
    source_mean: list[float]
    target_mean: list[float]
    source_attribution: list[float]
    source_mean_active: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))
    target_mean_active: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0))

    def to_json(self) -> dict:
        return {
            "latents": self.latents,
            "score": self.score,
            "source_mean": self.source_mean,
            "target_mean": self.target_mean,
            "source_attribution": self.source_attribution,
        }


def rank_candidates(source: Sequence[Profile], target: Sequence[Profile], n: int) -> Ranking:
    """Rank latents the model relies on for the region in the source cohort and that fire less
    in the target cohort (per-case means, averaged over cases).

    ``score_j = max(A_j, 0) / max_k A_k * clip(1 - m_t,j / m_s,j, 0, 1)`` with ``A`` the mean
    source attribution and ``m`` the mean neighbourhood code per cohort: the share of the
    model's evidence for the region that the target cohort has lost. When fewer than ``n``
    latents score > 0, the rest are filled by source attribution.
    """
    attr = np.mean([p.attribution for p in source], axis=0)
    ms = np.mean([p.mean_in for p in source], axis=0)
    mt = np.mean([p.mean_in for p in target], axis=0)
    lost = np.clip(1.0 - mt / np.maximum(ms, 1e-8), 0.0, 1.0)
    rel = np.maximum(attr, 0.0) / max(float(attr.max()), 1e-12)
    score = rel * lost
    order = [int(j) for j in np.argsort(-score, kind="stable") if score[j] > 0][:n]
    for j in np.argsort(-attr, kind="stable"):
        if len(order) >= n:
            break
        if int(j) not in order and attr[j] > 0:
            order.append(int(j))
    return Ranking(
        latents=order,
        score=[float(score[j]) for j in order],
        source_mean=[float(ms[j]) for j in order],
        target_mean=[float(mt[j]) for j in order],
        source_attribution=[float(attr[j]) for j in order],
        source_mean_active=np.mean([p.mean_active_in for p in source], axis=0),
        target_mean_active=np.mean([p.mean_active_in for p in target], axis=0),
    )


def edit_pool(
    ranking: Ranking,
    *,
    dilation: int,
    scales: Sequence[float] = (2.0, 4.0, 8.0),
    adds: Sequence[float] = (0.5, 1.0, 2.0),
    scopes: Sequence[str] = ("predicted_region", "all"),
    ablate: bool = True,
    reference_cohort: str = "source",
) -> list[Edit]:
    """Single edits over the candidates: scale up, add (multiples of the source's mean active
    code), patch to the source cohort, ablate; each in every scope of ``scopes``."""
    pool: list[Edit] = []
    for j in ranking.latents:
        unit = float(ranking.source_mean_active[j]) if ranking.source_mean_active.size else 1.0
        ops: list[dict] = [{"op": "scale", "value": s} for s in scales]
        ops += [{"op": "add", "value": a * unit} for a in adds if unit > 0]
        ops.append({"op": "patch", "reference_cohort": reference_cohort})
        if ablate:
            ops.append({"op": "ablate"})
        for scope in scopes:
            where = {"scope": scope}
            if scope == "predicted_region":
                where |= {"region": "WT", "dilation": dilation}
            for op in ops:
                pool.append(Edit(latent=j, **op, **where))
    return pool


def edited_labels(item: VolumeItem, sae, spec: InterventionSpec, reference_stats) -> np.ndarray:
    """Label map ``(X, Y, Z)`` of ``item`` under ``spec`` (the cached baseline when empty)."""
    logits, n_tok, _, _ = edited_logits(item.cache, sae, spec, reference_stats=reference_stats)
    return item.cache.baseline_labels if n_tok == 0 else logits_to_labels(item.cache.prepared, logits)


def region_dice(item: VolumeItem, labels: np.ndarray, region: str) -> float:
    """Dice of ``region`` between a predicted label map and the item's ground truth."""
    return dice(region_mask(labels, region), region_mask(item.label, region))


def with_edit(spec: InterventionSpec, edit: Edit) -> InterventionSpec:
    """``spec`` plus ``edit``, replacing an edit on the same latent and scope."""
    keep = [e for e in spec.edits if (e.latent, e.scope) != (edit.latent, edit.scope)]
    return InterventionSpec(edits=[*keep, edit])


Objective = Callable[[InterventionSpec], float]


def greedy(
    pool: Sequence[Edit],
    objective: Objective,
    *,
    max_edits: int,
    min_gain: float = 1e-3,
    start: InterventionSpec | None = None,
) -> tuple[InterventionSpec, float, int]:
    """Greedy forward selection: add the pool edit that raises ``objective`` most, up to
    ``max_edits`` edits, while the gain is at least ``min_gain``. Returns (spec, value, evals)."""
    spec = start or InterventionSpec()
    best = objective(spec)
    evals = 1
    for _ in range(max_edits):
        step_best, step_spec = best, None
        for edit in pool:
            cand = with_edit(spec, edit)
            if cand == spec:
                continue
            value = objective(cand)
            evals += 1
            if value > step_best:
                step_best, step_spec = value, cand
        if step_spec is None or step_best - best < min_gain:
            break
        spec, best = step_spec, step_best
    return spec, best, evals
