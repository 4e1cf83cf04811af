"""Apply an intervention spec by splicing SAE edits into the hook activation.

For each token ``t`` (one hook-grid position of one slice) with activation ``h_t`` ``(C,)``,
the SAE code is ``z_t = sae.encode(h_t)``; the spec edits it to ``z'_t`` and the network after
the hook sees

    h'_t = h_t + dec(z'_t) - dec(z_t)          (the SAE's reconstruction error is kept)

Only tokens whose code changed are spliced: ``h + dec(z) - dec(z)`` is not bit-exact in
floating point, so an empty spec (or one that changes nothing) returns the cached prefix's
own activation and reproduces the unedited prediction bit for bit. Only slices holding a
changed token re-run the suffix of the network.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from scipy import ndimage

from medseglens_core.interventions.cache import PrefixCache, slice_labels, slice_z
from medseglens_core.interventions.errors import (
    LatentOutOfRange,
    MissingGateSAE,
    MissingMask,
    MissingReference,
)
from medseglens_core.interventions.spec import GATE_EPS, Edit, Gate, InterventionSpec
from medseglens_core.metrics import LABELS, REGIONS, dice, region_volumes_ml

#: Label values of each region and label name (BraTS 2023): WT, TC, ET, NCR, SNFH.
REGION_LABELS: dict[str, tuple[int, ...]] = {
    **REGIONS,
    **{k: (v,) for k, v in LABELS.items() if k not in REGIONS},
}


def region_mask(labels: np.ndarray, region: str) -> np.ndarray:
    """Boolean mask of ``region`` (WT, TC, ET, NCR, SNFH) in a label map of any shape."""
    return np.isin(labels, REGION_LABELS[region])


def dilate(mask: np.ndarray, voxels: int) -> np.ndarray:
    """3-D binary dilation by ``voxels`` steps of 6-connectivity (a city-block ball)."""
    if voxels <= 0:
        return mask
    return ndimage.binary_dilation(mask, structure=ndimage.generate_binary_structure(3, 1), iterations=voxels)


@dataclass
class EditSummary:
    """What one edit did: tokens in its scope, tokens whose value changed, mean code before/after
    over the scope's tokens (activation units of the SAE code)."""

    latent: int
    op: str
    scope: str
    tokens_in_scope: int
    tokens_changed: int
    mean_before: float
    mean_after: float


@dataclass
class InterventionResult:
    """Outcome of one spec on one volume.

    Attributes:
        baseline_labels / edited_labels: ``(X, Y, Z)`` uint8 label maps on the case RAS grid.
        baseline_volume_ml / edited_volume_ml / volume_change_ml: per region (WT, TC, ET, NCR,
            SNFH), millilitres; change = edited - baseline.
        dice_before / dice_after / dice_change: per region vs the case label (fractions 0..1),
            None when the case has no label.
        changed_voxels: voxels whose label differs between baseline and edited.
        changed_tokens: hook tokens spliced; rerun_slices: slices whose suffix re-ran.
        edits: one :class:`EditSummary` per edit, in spec order.
        gate_score / gate_open: the spec's gate score on this volume and whether the edits
            applied (None when the spec has no gate).
    """

    baseline_labels: np.ndarray
    edited_labels: np.ndarray
    baseline_volume_ml: dict[str, float]
    edited_volume_ml: dict[str, float]
    volume_change_ml: dict[str, float]
    dice_before: dict[str, float] | None
    dice_after: dict[str, float] | None
    dice_change: dict[str, float] | None
    changed_voxels: int
    changed_tokens: int
    rerun_slices: int
    edits: list[EditSummary]
    gate_score: float | None = None
    gate_open: bool | None = None

    def to_json(self) -> dict[str, Any]:
        """Everything but the label arrays, JSON-serialisable."""
        out = {k: v for k, v in asdict(self).items() if k not in ("baseline_labels", "edited_labels")}
        return out


def scope_tokens(
    cache: PrefixCache, edit: Edit, mask: np.ndarray | None, case_shape: tuple[int, int, int]
) -> np.ndarray | None:
    """Token mask ``(Z*h*w,)`` for an edit's scope; None means "all tokens" (``all``/``active``)."""
    if edit.scope in ("all", "active"):
        return None
    if edit.scope == "predicted_region":
        assert edit.region is not None  # guaranteed by Edit validation
        return cache.region_tokens(edit.region, edit.dilation)
    if edit.scope == "mask":
        if mask is None:
            raise MissingMask(f"edit of latent {edit.latent} has scope 'mask': pass a mask array")
        if mask.shape != case_shape:
            raise MissingMask(f"mask shape {mask.shape} is not the case grid {case_shape}")
        vox = mask.astype(bool)
    elif edit.scope == "box":
        x0, y0, z0, x1, y1, z1 = edit.box or [0] * 6
        vox = np.zeros(case_shape, dtype=bool)
        vox[x0:x1, y0:y1, z0:z1] = True
    else:  # slices
        z0, z1 = edit.slices or [0, 0]
        vox = np.zeros(case_shape, dtype=bool)
        vox[:, :, z0:z1] = True
    return cache.voxels_to_tokens(vox)


def _new_values(edit: Edit, z: torch.Tensor, reference_stats: Mapping[str, Any] | None) -> torch.Tensor:
    """Edited values of one latent's code column ``z`` ``(n,)``."""
    if edit.op == "ablate":
        return torch.zeros_like(z)
    if edit.op == "clamp":
        return torch.full_like(z, float(edit.value))
    if edit.op == "scale":
        return z * float(edit.value)
    if edit.op == "add":
        return z + float(edit.value)
    cohort = edit.reference_cohort
    if reference_stats is None or cohort not in reference_stats:
        have = sorted(reference_stats) if reference_stats else []
        raise MissingReference(
            f"patch of latent {edit.latent} needs statistics of cohort {cohort!r}; given: {have}"
        )
    return torch.full_like(z, float(np.asarray(reference_stats[cohort])[edit.latent]))


def brain_tokens(prepared: Any, token_of_voxel: np.ndarray, n_tokens: int) -> np.ndarray | None:
    """Token mask ``(n_tokens,)`` of hook cells holding brain (the prepared case's
    ``brain_mask``) given a voxel->token map, or None when the prepared object has no brain mask
    (then every token counts)."""
    brain = getattr(prepared, "brain_mask", None)
    if brain is None:
        return None
    out = np.zeros(n_tokens, dtype=bool)
    idx = token_of_voxel[np.asarray(brain, dtype=bool) & (token_of_voxel >= 0)]
    out[idx] = True
    return out


def firing_rates(
    cache: PrefixCache, sae: Any, codes: torch.Tensor | None = None, hook: str | None = None
) -> torch.Tensor:
    """``(d_sae,)`` float64 fraction of the volume's brain tokens (:func:`brain_tokens`) where
    each latent of ``sae`` is active, at ``hook`` (default: the cache's hook).

    ``codes``: the volume's precomputed codes at the cache's hook ``(Z*h*w, d_sae)``; without
    them the brain tokens are encoded (chunked). Rates are kept on the cache per codes (or SAE)
    object and hook.
    """
    hook = hook or cache.hook
    codes = codes if hook == cache.hook else None
    key = (codes if codes is not None else sae, hook)
    kept = cache.__dict__.setdefault("_gate_rates", [])
    for k, rates in kept:
        if k[0] is key[0] and k[1] == hook:
            return rates
    tokens, token_of_voxel = cache.tokens_at(hook)
    mask = brain_tokens(cache.prepared, token_of_voxel, tokens.shape[0])
    idx = torch.from_numpy(np.flatnonzero(mask) if mask is not None else np.arange(tokens.shape[0]))
    with torch.no_grad():
        if codes is not None:
            active = (codes[idx.to(codes.device)] > 0).sum(dim=0).cpu()
        else:
            active = torch.zeros(int(sae.W_dec.shape[0]), dtype=torch.int64)
            for i in range(0, len(idx), 8192):
                rows = tokens[idx[i : i + 8192].to(tokens.device)]
                z = sae.encode(rows.to(sae.W_dec.device, sae.W_dec.dtype))
                active += (z > 0).sum(dim=0).cpu()
    rates = active.double() / max(len(idx), 1)
    kept.append((key, rates))
    del kept[:-4]  # a few SAEs/hooks at most per volume
    return rates


def gate_score(
    cache: PrefixCache,
    sae: Any,
    gate: Gate,
    codes: torch.Tensor | None = None,
    gate_sae: Any | None = None,
) -> float:
    """The gate's score on this volume: ``sum_j w_j log(rate_j + GATE_EPS)`` (spec module docs).

    The latents are ``gate_sae``'s when the gate reads another hook (``gate.hook``), else ``sae``'s.
    """
    other = gate.hook is not None and gate.hook != cache.hook
    if other and gate_sae is None:
        raise MissingGateSAE(f"the gate reads hook {gate.hook!r}: pass that hook's SAE (gate_sae)")
    reader = gate_sae if other else sae
    d_sae = int(reader.W_dec.shape[0])
    bad = [j for j in gate.latents if j >= d_sae]
    if bad:
        raise LatentOutOfRange(f"gate latent {bad[0]} does not exist: the gate's SAE has {d_sae} latents")
    rates = firing_rates(cache, reader, None if other else codes, gate.hook)[gate.latents]
    w = torch.tensor(gate.weights, dtype=torch.float64)
    return float((w * torch.log(rates + GATE_EPS)).sum())


def edit_codes(
    cache: PrefixCache,
    sae: Any,
    spec: InterventionSpec,
    *,
    mask: np.ndarray | None = None,
    reference_stats: Mapping[str, Any] | None = None,
    case_shape: tuple[int, int, int] | None = None,
    codes: torch.Tensor | None = None,
    gate_sae: Any | None = None,
) -> tuple[np.ndarray, torch.Tensor, torch.Tensor, list[EditSummary]]:
    """Encode the tokens any edit may touch and apply the edits in order.

    ``active`` scopes test the code before any edit. ``codes`` ``(Z*h*w, d_sae)``: the
    volume's precomputed codes (skips encoding). ``gate_sae``: the SAE a gate at another hook
    reads (:func:`gate_score`). Returns (token indices ``(n,)``, codes
    ``z`` ``(n, d_sae)``, edited codes ``z'``, per-edit summaries). A closed gate selects no
    token (every summary counts 0 tokens in scope).
    """
    case_shape = case_shape or tuple(cache.baseline_labels.shape)
    d_sae = int(sae.W_dec.shape[0])
    scopes = []
    for e in spec.edits:
        if e.latent >= d_sae:
            raise LatentOutOfRange(f"latent {e.latent} does not exist: the SAE has {d_sae} latents")
        scopes.append(scope_tokens(cache, e, mask, case_shape))
    empty = torch.zeros(0, d_sae)
    if not spec.edits:
        return np.zeros(0, dtype=np.int64), empty, empty, []
    if spec.gate is not None and gate_score(cache, sae, spec.gate, codes, gate_sae) < spec.gate.threshold:
        closed = [EditSummary(e.latent, e.op, e.scope, 0, 0, 0.0, 0.0) for e in spec.edits]
        return np.zeros(0, dtype=np.int64), empty, empty, closed
    if any(s is None for s in scopes):
        idx = np.arange(cache.n_tokens)
    else:
        idx = np.flatnonzero(np.logical_or.reduce(scopes))
    if codes is not None:
        z = codes[torch.from_numpy(idx).to(codes.device)]
    else:
        tokens = cache.tokens()
        sel_t = torch.from_numpy(idx).to(tokens.device)
        with torch.no_grad():
            z = sae.encode(tokens[sel_t].to(sae.W_dec.device, sae.W_dec.dtype))
    z_new = z.clone()
    summaries = []
    for e, s in zip(spec.edits, scopes, strict=True):
        rows = torch.ones(len(idx), dtype=torch.bool) if s is None else torch.from_numpy(s[idx])
        rows = rows.to(z.device)
        if e.scope == "active":
            rows &= z[:, e.latent] > 0
        before = z_new[rows, e.latent]
        after = _new_values(e, before, reference_stats).to(before.dtype)
        z_new[rows, e.latent] = after
        summaries.append(
            EditSummary(
                latent=e.latent,
                op=e.op,
                scope=e.scope,
                tokens_in_scope=int(rows.sum()),
                tokens_changed=int((after != before).sum()),
                mean_before=float(before.mean()) if before.numel() else 0.0,
                mean_after=float(after.mean()) if after.numel() else 0.0,
            )
        )
    return idx, z, z_new, summaries


def apply_spec(
    cache: PrefixCache,
    sae: Any,
    spec: InterventionSpec,
    *,
    label: np.ndarray | None = None,
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0),
    mask: np.ndarray | None = None,
    reference_stats: Mapping[str, Any] | None = None,
    gate_sae: Any | None = None,
) -> InterventionResult:
    """Apply ``spec`` to the cached volume and compare with the unedited prediction.

    Args:
        cache: the volume's :class:`PrefixCache` (same model and hook as the SAE's).
        sae: an SAE with ``encode (N, C) -> (N, d_sae)``, ``decode``, ``W_dec (d_sae, C)``.
        spec: the edits.
        label: ground-truth ``(X, Y, Z)`` labels on the case grid, for Dice; optional.
        spacing: voxel size in mm (RAS order), for volumes in mL.
        mask: ``(X, Y, Z)`` boolean array for edits with scope ``mask``.
        reference_stats: cohort -> ``(d_sae,)`` mean activation when active, for ``patch``.
        gate_sae: the SAE of ``spec.gate.hook`` when the gate reads another hook.
    """
    logits, n_tokens, n_slices, summaries = edited_logits(
        cache, sae, spec, mask=mask, reference_stats=reference_stats, gate_sae=gate_sae
    )
    score = None
    if spec.gate is not None and spec.edits:
        score = gate_score(cache, sae, spec.gate, gate_sae=gate_sae)
    edited = cache.baseline_labels
    if n_tokens:
        # only re-run slices can differ: map just those to the case grid (same result as the
        # full-volume path, tested), the rest keeps the cached baseline labels
        ks = torch.nonzero((logits != cache.baseline_logits).flatten(1).any(dim=1)).flatten().tolist()
        edited = cache.baseline_labels.copy()
        if ks:
            zs = slice_z(cache, ks)
            edited[:, :, zs] = cache.protect(slice_labels(cache, ks, logits[ks]), zs, spec.protect)
    result = summarise(cache.baseline_labels, edited, label, spacing, n_tokens, n_slices, summaries)
    if score is not None and spec.gate is not None:
        result.gate_score, result.gate_open = score, score >= spec.gate.threshold
    return result


def edited_logits(
    cache: PrefixCache,
    sae: Any,
    spec: InterventionSpec,
    *,
    mask: np.ndarray | None = None,
    reference_stats: Mapping[str, Any] | None = None,
    gate_sae: Any | None = None,
) -> tuple[torch.Tensor, int, int, list[EditSummary]]:
    """Slice logits ``(Z, 4, H, W)`` under ``spec`` + (changed tokens, re-run slices, summaries)."""
    idx, z, z_new, summaries = edit_codes(
        cache, sae, spec, mask=mask, reference_stats=reference_stats, gate_sae=gate_sae
    )
    changed = (z_new != z).any(dim=1)
    if not bool(changed.any()):
        return cache.baseline_logits, 0, 0, summaries
    with torch.no_grad():
        delta = sae.decode(z_new[changed]) - sae.decode(z[changed])
    tok = idx[changed.cpu().numpy()]
    h, w = cache.hook_shape
    per_slice: dict[int, torch.Tensor] = {}
    ks, rem = np.divmod(tok, h * w)
    for k in np.unique(ks):
        sel = ks == k
        d = torch.zeros(h * w, cache.channels, dtype=delta.dtype, device=delta.device)
        d[torch.from_numpy(rem[sel]).to(delta.device)] = delta[torch.from_numpy(sel).to(delta.device)]
        per_slice[int(k)] = d.T.reshape(cache.channels, h, w)
    logits, n_slices = cache.run_edited(per_slice)
    return logits, int(changed.sum()), n_slices, summaries


def summarise(
    baseline: np.ndarray,
    edited: np.ndarray,
    label: np.ndarray | None,
    spacing: tuple[float, float, float],
    changed_tokens: int,
    rerun_slices: int,
    summaries: list[EditSummary],
) -> InterventionResult:
    """Build the :class:`InterventionResult` of a baseline/edited pair."""
    vb, ve = region_volumes_ml(baseline, spacing), region_volumes_ml(edited, spacing)
    if label is not None:
        db = {r: dice(region_mask(baseline, r), region_mask(label, r)) for r in REGION_LABELS}
        de = {r: dice(region_mask(edited, r), region_mask(label, r)) for r in REGION_LABELS}
        dc: dict[str, float] | None = {r: de[r] - db[r] for r in REGION_LABELS}
    else:
        db = de = dc = None
    return InterventionResult(
        baseline_labels=baseline,
        edited_labels=edited,
        baseline_volume_ml=vb,
        edited_volume_ml=ve,
        volume_change_ml={r: ve[r] - vb[r] for r in REGION_LABELS},
        dice_before=db,
        dice_after=de,
        dice_change=dc,
        changed_voxels=int((baseline != edited).sum()),
        changed_tokens=changed_tokens,
        rerun_slices=rerun_slices,
        edits=summaries,
    )
