"""Which weights made a result: the ``provenance`` block of segmentations, interventions, reports, jobs.

``provenance(model_dir, sae_dir, zoo=..., device=...)`` returns::

    {"model_id", "model_sha256", "sae_id", "sae_sha256", "package_version",
     "zoo_config_sha256", "seed", "device", "precision", "torch_version"}

The sha256 values are of the weights files' bytes as they are on disk now (not copied from
the cards), cached per ``(path, size, mtime_ns)`` so a resident service hashes each file once.
Ids come from the cards (or the folder names); no host path, file name or upload header text
is ever part of the block. ``zoo_config_sha256`` is ``zoo.json``'s ``config_sha256`` (or the
hash of its ``config``); ``seed`` the model's training seed from its card; ``precision`` the
network's (``fp32``, or the ``bf16``/``fp16`` autocast it ran under; SAE codes are float32 always).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from medseglens_core import __version__
from medseglens_core.checksums import sha256_file

MODEL_WEIGHTS = "weights.safetensors"
SAE_WEIGHTS = "sae_weights.safetensors"
KEYS = (
    "model_id",
    "model_sha256",
    "sae_id",
    "sae_sha256",
    "package_version",
    "zoo_config_sha256",
    "seed",
    "device",
    "precision",
    "torch_version",
)

_lock = threading.Lock()
_hashes: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str | None:
    """sha256 of the file's bytes (None when it does not exist), cached by path, size and mtime."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError:
        return None
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    with _lock:
        hit = _hashes.get(key)
    if hit is None:
        hit = sha256_file(p)
        with _lock:
            _hashes[key] = hit
    return hit


def _card(folder: Path) -> dict[str, Any]:
    try:
        return json.loads((folder / "card.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def zoo_config_sha256(zoo: str | Path | None) -> str | None:
    """The zoo recipe's sha256 from ``ZOO/zoo.json`` (None without one)."""
    if zoo is None:
        return None
    try:
        summary = json.loads((Path(zoo) / "zoo.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if summary.get("config_sha256"):
        return str(summary["config_sha256"])
    if isinstance(summary.get("config"), dict):
        from medseglens_core.zoo import config_sha256

        return config_sha256(summary["config"])
    return None


def _seed(card: dict[str, Any]) -> int | None:
    training = card.get("training") or {}
    seed = training.get("seed", (training.get("config") or {}).get("seed"))
    return int(seed) if isinstance(seed, int | float) else None


def provenance(
    model_dir: str | Path | None,
    sae_dir: str | Path | None = None,
    *,
    zoo: str | Path | None = None,
    device: str | None = None,
    precision: str = "fp32",
    model_card: dict[str, Any] | None = None,
    sae_card: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The provenance block (module doc); cards are read from the folders unless given."""
    import torch

    out: dict[str, Any] = dict.fromkeys(KEYS)
    if model_dir is not None:
        mdir = Path(model_dir)
        card = model_card if model_card is not None else _card(mdir)
        out["model_id"] = str(card.get("id", mdir.name))
        out["model_sha256"] = file_sha256(mdir / MODEL_WEIGHTS)
        out["seed"] = _seed(card)
    if sae_dir is not None:
        sdir = Path(sae_dir)
        card = sae_card if sae_card is not None else _card(sdir)
        out["sae_id"] = str(card.get("id", sdir.name))
        out["sae_sha256"] = file_sha256(sdir / Path(str(card.get("weights_file") or SAE_WEIGHTS)).name)
    out["package_version"] = __version__
    out["zoo_config_sha256"] = zoo_config_sha256(zoo)
    out["device"] = device
    out["precision"] = precision
    out["torch_version"] = torch.__version__
    return out
