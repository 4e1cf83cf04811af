"""The ``ood`` and ``provenance`` blocks of segmentations and interventions (service side).

OOD calibration per (model, SAE) comes, in this order, from: memory; ``ZOO/ood/<sae or model
id>.json`` written by ``zoo build`` when its recorded weights sha256 match the files on disk and
the model runs in float32 (the zoo calibrates in float32); the data directory's cache
``DATA_DIR/ood/<id>-<sha>.json``, keyed by the weights and the network precision (a bf16 pool's
latent rates are its own, so it calibrates on them); or it is computed once from the
zoo's training and validation cases (``medseglens_core.analysis.ood.calibrate_from_zoo``, about
10-15 s per SAE on 2 cores) and cached there. A zoo without those cases gives
``calibrated: false``. Nothing here writes into the zoo.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import Any

from medseglens_core.provenance import file_sha256, provenance

log = logging.getLogger("medseglens.trust")

_lock = threading.Lock()
_key_locks: dict[tuple, threading.Lock] = {}
_memory: dict[tuple, dict[str, Any]] = {}


def _weights_sha(resident: Any, name: str) -> str | None:
    return file_sha256(Path(resident.path) / name) if resident is not None else None


def _cohorts(pool: Any, model: Any, sae: Any | None) -> list[str]:
    if sae is not None and sae.card.get("cohorts"):
        return [str(c) for c in sae.card["cohorts"]]
    train = Path(pool.zoo) / "data" / "train"
    return sorted(p.name for p in train.iterdir() if p.is_dir()) if train.is_dir() else []


def calibration(pool: Any, model: Any, sae: Any | None, cache_root: Path | None) -> dict[str, Any]:
    """The OOD calibration document of ``model`` (+ ``sae``), computed at most once per weights."""
    from medseglens_core.analysis.encode import resolve_hook
    from medseglens_core.analysis.ood import calibrate_from_zoo

    model_sha = _weights_sha(model, "weights.safetensors")
    sae_sha = (
        _weights_sha(sae, str(Path(sae.card.get("weights_file") or "sae_weights.safetensors").name))
        if sae
        else None
    )
    name = sae.id if sae is not None else model.id
    precision = str(getattr(model.obj, "precision", "fp32"))
    key = (str(Path(pool.zoo).resolve()), name, model_sha, sae_sha, precision)
    with _lock:
        if key in _memory:
            return _memory[key]
        key_lock = _key_locks.setdefault(key, threading.Lock())
    with key_lock:
        if key in _memory:
            return _memory[key]
        doc = _load(Path(pool.zoo) / "ood" / f"{name}.json", model_sha, sae_sha, precision)
        digest = hashlib.sha256(f"{key}".encode()).hexdigest()[:16]
        cached = Path(cache_root) / "ood" / f"{name}-{digest}.json" if cache_root is not None else None
        if doc is None and cached is not None:
            doc = _load(cached, model_sha, sae_sha, precision)
        if doc is None:
            hook = resolve_hook(model.obj, None, sae.card) if sae is not None else None
            doc = calibrate_from_zoo(
                pool.zoo,
                model.obj,
                sae.obj if sae is not None else None,
                hook,
                _cohorts(pool, model, sae),
                model_id=model.id,
                model_sha256=model_sha,
                sae_id=sae.id if sae is not None else None,
                sae_sha256=sae_sha,
            )
            doc["precision"] = precision
            if cached is not None:
                try:
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    tmp = cached.with_suffix(".partial")
                    tmp.write_text(json.dumps(doc))
                    tmp.replace(cached)
                except OSError as exc:  # a read-only data dir: keep it in memory only
                    log.warning("ood calibration not cached", extra={"error": str(exc)})
        with _lock:
            _memory[key] = doc
        return doc


def _load(path: Path, model_sha: str | None, sae_sha: str | None, precision: str) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if doc.get("model_sha256") != model_sha or doc.get("sae_sha256") != sae_sha:
        return None  # calibrated on other weights
    if doc.get("precision", "fp32") != precision:
        return None  # calibrated on the rates of another network precision
    return doc


def ood_block(
    pool: Any,
    model: Any,
    sae: Any | None,
    entry: Any,
    cache_root: Path | None,
    rates: Any | None = None,
) -> dict[str, Any]:
    """The scan's ``ood`` block from the cached prefix ``entry`` (``segmenting.CachedVolume``).

    ``rates``: the latent firing rates when the caller already has them (the top-latent summary's
    ``firing_rate``, same tokens and codes); else they are encoded here from the cached prefix.
    The block depends only on (volume, model, SAE weights): it is kept on ``entry`` and reused.
    """
    from medseglens_core.analysis.ood import CaseProfile, assess, input_stats, latent_rates

    memo = entry.ood if isinstance(getattr(entry, "ood", None), dict) else None
    key = sae.id if sae is not None else ""
    if memo is not None and key in memo:
        return dict(memo[key])
    cal = calibration(pool, model, sae, cache_root)
    if sae is None or cal.get("latent") is None:
        rates = None
    elif rates is None:
        rates = latent_rates(sae.obj, [p.h for _, _, p in entry.cache.chunks], entry.cache.prepared)
    block = assess(cal, CaseProfile(rates, input_stats(entry.cache.prepared, entry.spacing)))
    if cal.get("note"):
        block["note"] = cal["note"]
    if memo is not None:
        memo[key] = dict(block)
    return block


def provenance_block(pool: Any, model: Any, sae: Any | None) -> dict[str, Any]:
    """The ``provenance`` block: ids, weights sha256 (of the files on disk), versions, device."""
    return provenance(
        model.path,
        sae.path if sae is not None else None,
        zoo=pool.zoo,
        device=str(model.device),
        precision=getattr(model.obj, "precision", "fp32"),
        model_card=model.card,
        sae_card=sae.card if sae is not None else None,
    )
