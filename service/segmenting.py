"""Blocking work behind the segmentation and intervention routes (run through ``ModelPool.run``).

One network pass per volume and model: :func:`volume_prefix` loads the stored volume, prepares it
and runs ``PrefixCache.build`` (the prefix up to the SAE's hook point, then the suffix for the
logits); the result goes into ``pool.prefix_cache`` under ``(volume_id, model_id)`` so a later
intervention, latent map or re-segmentation re-runs at most the suffix. Everything here is core
calls (``medseglens_core``) glued to the service's storage; no science lives in this module.

Artefacts of a segmentation or intervention directory::

    mask.nii.gz        the label map on the volume's original grid and affine (io.write_label_map)
    labels.npy         the same labels (X, Y, Z) uint8 on the RAS case grid (overlays, comparisons)
    latents/<j>.nii.gz activation maps of latent j, written on first request (io.write_volume)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from service import trust
from service.cases import load_volume_case
from service.models_db import Volume
from service.pool import ModelPool, Resident
from service.storage import Storage

MASK_FILE = "mask.nii.gz"
LABELS_FILE = "labels.npy"


@dataclass
class CachedVolume:
    """What ``pool.prefix_cache`` keeps per ``(volume_id, model_id)``.

    ``cache`` is the core ``PrefixCache`` (prepared slices, prefix per batch, unedited logits and
    labels ``(X, Y, Z)`` uint8 RAS); ``label`` the ground truth ``(X, Y, Z)`` or None; ``geometry``
    the volume's ``io.Geometry``; ``spacing`` mm in RAS order.
    """

    cache: Any
    label: np.ndarray | None
    geometry: Any
    spacing: tuple[float, float, float]
    ood: dict[str, Any] = field(default_factory=dict)  # SAE id -> the scan's ood block (trust.ood_block)


def hook_of(model: Resident, sae: Resident | None) -> str:
    """The hook point to cache: the SAE card's ``hook``, else the model's default hook."""
    from medseglens_core.analysis.encode import resolve_hook

    return resolve_hook(model.obj, None, sae.card if sae is not None else None)


def volume_prefix(
    pool: ModelPool, storage: Storage, volume: Volume, model: Resident, hook: str
) -> tuple[CachedVolume, bool, dict[str, float]]:
    """The volume's cached prefix for ``model`` at ``hook`` (built and cached on a miss).

    Returns ``(entry, cache_hit, timings)`` with timings ``load_s`` and ``network_s`` in seconds.
    """
    from medseglens_core.data.preprocess import prepare_case
    from medseglens_core.interventions.cache import PrefixCache

    key = (volume.id, model.id)
    entry = pool.prefix_cache.get(key)
    if entry is not None and entry.cache.hook == hook:
        return entry, True, {"load_s": 0.0, "network_s": 0.0}
    t0 = time.perf_counter()
    case = load_volume_case(storage, volume)
    prepared = prepare_case(case, model.obj.cfg.input_size)
    t1 = time.perf_counter()
    cache = PrefixCache.build(model.obj, prepared, hook)
    spacing = tuple(float(s) for s in case.geometry.spacing)
    entry = CachedVolume(cache, case.label, case.geometry, spacing)  # type: ignore[arg-type]
    pool.prefix_cache.put(key, entry)
    return entry, False, {"load_s": t1 - t0, "network_s": time.perf_counter() - t1}


def _top_latent(stat: Any) -> dict[str, Any]:
    return {
        "latent": stat.latent,
        "total_activation": stat.total_activation,
        "tumour_activation": stat.tumour_activation,
        "max": stat.max_activation,
        "mean": stat.mean_activation,
        "active_voxels": stat.active_voxels,
        "centroid_vox": stat.centroid_voxel,
        "centroid_mm": stat.centroid_mm,
        "overlap": {"predicted": stat.overlap_pred, "ground_truth": stat.overlap_gt},
    }


def write_labels(labels: np.ndarray, geometry: Any, out_dir: Path) -> None:
    """``mask.nii.gz`` (original grid) and ``labels.npy`` (RAS case grid) into ``out_dir``."""
    from medseglens_core.io import write_label_map

    out_dir.mkdir(parents=True, exist_ok=True)
    write_label_map(labels, geometry, out_dir / MASK_FILE)
    np.save(out_dir / LABELS_FILE, np.ascontiguousarray(labels, dtype=np.uint8))


def segment(
    pool: ModelPool,
    storage: Storage,
    volume: Volume,
    model: Resident,
    sae: Resident | None,
    top_k: int,
    out_dir: Path,
) -> dict[str, Any]:
    """Segment ``volume`` with ONE network pass, summarise the SAE's top latents, write the mask.

    Returns the summary stored with the segmentation: ``hook``, ``region_volumes_ml``, ``scores``
    (``metrics.score_segmentation`` or None), ``top_latents`` (ranked by total activation),
    ``timings`` (seconds), ``prefix_cache_hit``, ``ood`` and ``provenance`` (``service.trust``).
    """
    from medseglens_core.analysis.latents import summarise_latents
    from medseglens_core.metrics import region_volumes_ml, score_segmentation

    start = time.perf_counter()
    hook = hook_of(model, sae)
    entry, hit, timings = volume_prefix(pool, storage, volume, model, hook)
    labels = entry.cache.baseline_labels
    t0 = time.perf_counter()
    top: list[dict[str, Any]] = []
    rates = None
    if sae is not None:
        hs = [p.h for _, _, p in entry.cache.chunks]
        summary = summarise_latents(
            sae.obj, hs, entry.cache.prepared, labels, entry.label, top_k, affine=entry.geometry.affine
        )
        top = [_top_latent(summary.stats[j]) for j in summary.top_total]
        rates = summary.firing_rate
    timings["latents_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    ood = trust.ood_block(pool, model, sae, entry, storage.root, rates)
    timings["ood_s"] = time.perf_counter() - t0
    scores = score_segmentation(labels, entry.label, entry.spacing) if entry.label is not None else None
    t0 = time.perf_counter()
    write_labels(labels, entry.geometry, out_dir)
    timings["write_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - start
    return {
        "hook": hook if sae is not None else None,
        "region_volumes_ml": region_volumes_ml(labels, entry.spacing),
        "scores": scores,
        "top_latents": top,
        "timings": {k: round(v, 6) for k, v in timings.items()},
        "prefix_cache_hit": hit,
        "ood": ood,
        "provenance": trust.provenance_block(pool, model, sae),
    }


def write_latent_map(
    pool: ModelPool,
    storage: Storage,
    volume: Volume,
    model: Resident,
    sae: Resident,
    latent: int,
    path: Path,
) -> None:
    """Write latent ``latent``'s activation map (float32 NIfTI, original grid) to ``path``.

    Codes are taken over brain tokens only, as in ``analysis.latents.summarise_latents``, so a
    top latent's map here equals the one its statistics were computed from.
    """
    import torch
    import torch.nn.functional as F

    from medseglens_core.analysis.encode import encode_maps, input_brain_mask
    from medseglens_core.analysis.latents import VolumeLatents

    entry, _, _ = volume_prefix(pool, storage, volume, model, hook_of(model, sae))
    prepared = entry.cache.prepared
    with torch.no_grad():
        h = torch.cat([p.h for _, _, p in entry.cache.chunks])
        codes = encode_maps(sae.obj, h)[:, latent]  # (Z', h, w)
    brain_px = input_brain_mask(torch.as_tensor(prepared.slices))
    token_brain = F.adaptive_avg_pool2d(brain_px.float()[:, None], tuple(codes.shape[-2:]))[:, 0] >= 0.5
    brain = np.asarray(prepared.brain_mask, dtype=bool)
    maps = VolumeLatents([], [], {}, {latent: (codes * token_brain).cpu()}, prepared, brain)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{time.monotonic_ns()}.nii.gz")
    maps.write_latent_map(latent, entry.geometry, tmp)
    tmp.replace(path)


def render_overlay(
    storage: Storage, volume: Volume, labels_path: Path, z: int | None, model_id: str | None = None
) -> bytes:
    """PNG: the four modalities of axial slice ``z`` (RAS case grid) with the predicted labels,
    a colour legend and a caption naming the model.

    ``z`` None -> the slice with the most predicted tumour (the middle one when there is none).
    """
    from service.previews import render_case_preview

    case = load_volume_case(storage, volume)
    labels = np.load(labels_path)
    caption = f"predicted by {model_id}" if model_id else "predicted labels"
    return render_case_preview(case.image, labels, z, caption=caption)


def intervene(
    pool: ModelPool,
    storage: Storage,
    volume: Volume,
    model: Resident,
    sae: Resident,
    spec: Any,
    reference_stats: dict[str, np.ndarray] | None,
    out_dir: Path,
    mask_volume: Volume | None = None,
    gate_sae: Resident | None = None,
) -> dict[str, Any]:
    """Apply ``spec`` (``interventions.spec.InterventionSpec``) to the volume's cached prefix.

    Only the suffix after the hook re-runs, and only for slices with a changed token. Edits with
    scope ``mask`` use ``mask_volume``'s label map > 0 (the core refuses another grid shape).
    Writes the edited mask; returns ``InterventionResult.to_json()`` plus ``prefix_cache_hit``
    and timings.
    """
    from medseglens_core.interventions.apply import apply_spec

    start = time.perf_counter()
    entry, hit, timings = volume_prefix(pool, storage, volume, model, hook_of(model, sae))
    t0 = time.perf_counter()
    mask = None
    if mask_volume is not None:
        mask_label = load_volume_case(storage, mask_volume).label
        mask = None if mask_label is None else mask_label > 0
    result = apply_spec(
        entry.cache,
        sae.obj,
        spec,
        label=entry.label,
        spacing=entry.spacing,
        mask=mask,
        reference_stats=reference_stats,
        gate_sae=gate_sae.obj if gate_sae is not None else None,
    )
    timings["edit_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_labels(result.edited_labels, entry.geometry, out_dir)
    timings["write_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - start
    out = result.to_json()
    out["prefix_cache_hit"] = hit
    t0 = time.perf_counter()
    out["ood"] = trust.ood_block(pool, model, sae, entry, storage.root)
    timings["ood_s"] = time.perf_counter() - t0
    out["timings"] = {k: round(v, 6) for k, v in timings.items()}
    out["provenance"] = trust.provenance_block(pool, model, sae)
    return out
