"""Fast scoring of many specs on cached volumes: only edited slices are re-run and re-scored.

The recovery search scores hundreds of specs. Each spec only changes the slices holding a
token it edits, so a spec's region Dice follows from per-slice counts: the unedited
intersection / prediction / truth voxel counts of every axial slice are kept, and an edit
replaces the counts of its re-run slices only. The suffix runs once for the edited slices of
MANY specs stacked in one batch.

Slices of the prepared stack map one to one onto case-grid axial slices (``z = crop z0 + k``),
so a slice's labels on the case grid depend on that slice's logits only (the in-plane resampling
of :meth:`PreparedCase.to_case_grid` then ``probs_to_labels``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from medseglens_core.interventions.apply import REGION_LABELS, edit_codes
from medseglens_core.interventions.cache import PrefixCache, slice_labels, slice_z
from medseglens_core.interventions.spec import InterventionSpec
from medseglens_core.models.base import Prefix

#: Slices per suffix call when stacking the edited slices of several specs.
SUFFIX_BATCH = 32


class SliceScorer:
    """Region Dice of one labelled volume with some slices replaced (exact, from counts).

    ``label`` is ``(X, Y, Z)`` on the case grid; ``region`` one of WT, TC, ET, NCR, SNFH.
    ``stride`` > 1 scores only every ``stride``-th prepared slice (a cheap screening estimate:
    Dice over those slices only; edits elsewhere are not run). Default 1: the exact Dice.
    """

    def __init__(self, cache: PrefixCache, label: np.ndarray, region: str, stride: int = 1) -> None:
        self.cache, self.values = cache, list(REGION_LABELS[region])
        self.keep = np.zeros(cache.n_slices, dtype=bool)
        self.keep[:: max(1, stride)] = True
        zmask = np.zeros(label.shape[2], dtype=bool)
        zmask[slice_z(cache, np.flatnonzero(self.keep).tolist())] = True
        self.gt = np.isin(label, self.values)
        pred = np.isin(cache.baseline_labels, self.values)
        self.inter = np.where(zmask, (pred & self.gt).sum(axis=(0, 1)), 0).astype(np.int64)  # (Z,)
        self.pred = np.where(zmask, pred.sum(axis=(0, 1)), 0).astype(np.int64)
        self.gt_total = int(self.gt[:, :, zmask].sum())
        self.base = self._dice(int(self.inter.sum()), int(self.pred.sum()))

    def _dice(self, inter: int, pred: int) -> float:
        if pred + self.gt_total == 0:
            return 1.0
        return 2.0 * inter / (pred + self.gt_total)

    def counts(self, ks: Sequence[int], labels: np.ndarray | None) -> tuple[int, int]:
        """(intersection, predicted) voxel counts of the region when prepared slices ``ks`` carry
        case-grid labels ``labels`` ``(X, Y, len(ks))``."""
        if len(ks) == 0 or labels is None:
            return int(self.inter.sum()), int(self.pred.sum())
        zs = slice_z(self.cache, ks)
        pred = np.isin(labels, self.values)
        inter = int(self.inter.sum() - self.inter[zs].sum() + (pred & self.gt[:, :, zs]).sum())
        return inter, int(self.pred.sum() - self.pred[zs].sum() + pred.sum())

    def dice(self, ks: Sequence[int], labels: np.ndarray) -> float:
        """Dice when prepared slices ``ks`` carry case-grid labels ``labels`` ``(X, Y, len(ks))``."""
        return self._dice(*self.counts(ks, labels))


def item_codes(cache: PrefixCache, sae: Any) -> torch.Tensor:
    """SAE codes ``(Z*h*w, d_sae)`` of every token of the volume (computed once, kept on the cache)."""
    codes = getattr(cache, "_codes", None)
    if codes is None or codes.shape[1] != int(sae.W_dec.shape[0]):
        with torch.no_grad():
            codes = sae.encode(cache.tokens().to(sae.W_dec.device, sae.W_dec.dtype))
        cache._codes = codes  # type: ignore[attr-defined]
    return codes


def spec_deltas(
    cache: PrefixCache,
    sae: Any,
    spec: InterventionSpec,
    reference_stats: Mapping[str, Any] | None = None,
    gate_sae: Any | None = None,
) -> dict[int, torch.Tensor]:
    """Hook-activation delta ``(C, h, w)`` per edited prepared slice ``k`` under ``spec``."""
    if not spec.edits:
        return {}
    idx, z, z_new, _ = edit_codes(
        cache, sae, spec, reference_stats=reference_stats, codes=item_codes(cache, sae), gate_sae=gate_sae
    )
    changed = (z_new != z).any(dim=1)
    if not bool(changed.any()):
        return {}
    with torch.no_grad():
        delta = sae.decode(z_new[changed]) - sae.decode(z[changed])
    tok = idx[changed.cpu().numpy()]
    h, w = cache.hook_shape
    ks, rem = np.divmod(tok, h * w)
    out: dict[int, torch.Tensor] = {}
    for k in np.unique(ks):
        sel = ks == k
        d = torch.zeros(h * w, cache.channels, dtype=delta.dtype, device=delta.device)
        d[torch.from_numpy(rem[sel]).to(delta.device)] = delta[torch.from_numpy(sel).to(delta.device)]
        out[int(k)] = d.T.reshape(cache.channels, h, w)
    return out


def _row_source(cache: PrefixCache) -> list[tuple[Prefix, int]]:
    """``(chunk prefix, row)`` of every prepared slice ``k``."""
    return [(p, k - start) for start, stop, p in cache.chunks for k in range(start, stop)]


@torch.no_grad()
def run_rows(cache: PrefixCache, rows: Sequence[tuple[int, torch.Tensor]]) -> torch.Tensor:
    """Logits ``(n, 4, H, W)`` for ``n`` (slice ``k``, delta ``(C, h, w)``) pairs, stacked in
    batches of :data:`SUFFIX_BATCH` slices (slices may repeat with different deltas)."""
    src = _row_source(cache)
    outs = []
    for i in range(0, len(rows), SUFFIX_BATCH):
        part = rows[i : i + SUFFIX_BATCH]
        picks = [src[k] for k, _ in part]
        if any(c.ndim == 0 or c.shape[0] != p.h.shape[0] for p, _ in picks for c in p.cache):
            outs += [_run_one(cache, k, d) for k, d in part]  # opaque cache: one slice at a time
            continue
        first = picks[0][0]
        h = torch.stack([p.h[r] for p, r in picks])
        delta = torch.stack([d.to(h.device, h.dtype) for _, d in part])
        cached = tuple(torch.stack([p.cache[j][r] for p, r in picks]) for j in range(len(first.cache)))
        pre = Prefix(hook=first.hook, h=h, cache=cached, out_size=first.out_size)
        outs.append(cache.model.run_suffix(pre, h + delta).float().cpu())
    return torch.cat(outs) if outs else torch.zeros(0)


def _run_one(cache: PrefixCache, k: int, delta: torch.Tensor) -> torch.Tensor:
    logits, _ = cache.run_edited({k: delta})
    return logits[k : k + 1]


def score_specs(
    cache: PrefixCache,
    scorer: SliceScorer,
    sae: Any,
    specs: Sequence[InterventionSpec],
    reference_stats: Mapping[str, Any] | None = None,
    *,
    volumes: bool = False,
    gate_sae: Any | None = None,
) -> list[float]:
    """Region Dice of one volume under each spec (one stacked suffix run for all of them), or
    with ``volumes=True`` the predicted region's voxel count (over the scorer's slices).
    ``gate_sae``: the SAE a gate at another hook reads."""
    deltas = [
        {k: d for k, d in spec_deltas(cache, sae, s, reference_stats, gate_sae).items() if scorer.keep[k]}
        for s in specs
    ]
    rows = [(k, d) for per in deltas for k, d in sorted(per.items())]
    logits = run_rows(cache, rows) if rows else torch.zeros(0)
    out, pos = [], 0
    for spec, per in zip(specs, deltas, strict=True):
        ks = sorted(per)
        labels = None
        if ks:
            labels = cache.protect(
                slice_labels(cache, ks, logits[pos : pos + len(ks)]), slice_z(cache, ks), spec.protect
            )
        out.append(float(scorer.counts(ks, labels)[1]) if volumes else scorer.dice(ks, labels))
        pos += len(ks)
    return out
