"""SAE storage: ``cfg.json`` + ``sae_weights.safetensors`` (SAELens names) + ``card.json``.

``sae_weights.safetensors`` holds ``W_enc (d_in, d_sae)``, ``W_dec (d_sae, d_in)``,
``b_enc (d_sae,)``, ``b_dec (d_in,)``, ``threshold (d_sae,)``, float32, in the SCALED activation
space: multiply raw activations by ``cfg.json["activation_scale"]`` before encoding and divide
reconstructions by it (:meth:`SAE.encode`/:meth:`SAE.decode` do this). ``cfg.json`` is
:class:`SAEConfig` plus ``d_in``/``d_sae``/``architecture`` keys SAELens readers look for.

The card (``card.json``) records: ``id``, ``model_id``, ``hook``, ``cohorts``, ``case_ids``,
``architecture``, ``d_in``, ``d_sae``, ``k``, ``metrics`` (with at least ``explained_variance``
and ``dead_fraction``), ``weights_sha256`` (of the weights file, checked on load), plus whatever
else the caller passes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from medseglens_core.checksums import sha256_file
from medseglens_core.sae.base import SAE, SAEConfig, build_sae
from medseglens_core.sae.errors import CorruptSAE, SAENotFound

__all__ = ["CARD", "CFG", "WEIGHTS", "load_sae", "save_sae", "sha256_file"]

CFG, WEIGHTS, CARD = "cfg.json", "sae_weights.safetensors", "card.json"
_TENSORS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def save_sae(sae: SAE, out_dir: str | Path, card: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``cfg.json``, ``sae_weights.safetensors`` and ``card.json`` into ``out_dir``.

    ``card`` supplies the descriptive fields (id, model_id, hook, cohorts, case_ids, metrics...);
    architecture, sizes and the weights checksum are filled in here. Returns the card written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = sae.cfg.to_dict()
    _write_json(out / CFG, {**cfg, "architecture": cfg["arch"], "dtype": "float32"})
    tensors = {name: getattr(sae, name).detach().float().cpu().contiguous() for name in _TENSORS}
    tmp = out / (WEIGHTS + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out / WEIGHTS)
    full = dict(card or {})
    full.setdefault("id", out.name)
    full.setdefault("metrics", {})
    full.update(
        architecture=sae.cfg.arch,
        d_in=sae.cfg.d_in,
        d_sae=sae.cfg.d_sae,
        k=sae.cfg.k,
        activation_scale=sae.cfg.activation_scale,
        weights_file=WEIGHTS,
        weights_sha256=sha256_file(out / WEIGHTS),
    )
    _write_json(out / CARD, full)
    return full


def load_sae(sae_dir: str | Path, *, device: str | torch.device = "cpu") -> tuple[SAE, dict[str, Any]]:
    """Read an SAE directory; verifies the checksum (when a card exists) and tensor shapes.

    Returns ``(sae, card)`` with ``sae`` in eval mode on ``device`` (``card`` is ``{}`` if absent).
    """
    root = Path(sae_dir)
    if not (root / CFG).is_file() or not (root / WEIGHTS).is_file():
        raise SAENotFound(
            f"SAE directory {root.name!r} lacks {CFG} or {WEIGHTS}; train or copy the SAE first"
        )
    raw = json.loads((root / CFG).read_text())
    raw.pop("architecture", None)
    raw.pop("dtype", None)
    cfg = SAEConfig.from_dict(raw)
    card = json.loads((root / CARD).read_text()) if (root / CARD).is_file() else {}
    expected = card.get("weights_sha256")
    if expected and sha256_file(root / WEIGHTS) != expected:
        raise CorruptSAE(
            f"{WEIGHTS} of SAE {root.name!r} does not match its card's sha256; re-save or re-copy it"
        )
    tensors = load_file(str(root / WEIGHTS))
    sae = build_sae(cfg)
    for name in _TENSORS:
        if name not in tensors or tensors[name].shape != getattr(sae, name).shape:
            raise CorruptSAE(
                f"{WEIGHTS} of SAE {root.name!r}: {name} missing or of the wrong shape for cfg.json"
            )
        with torch.no_grad():
            getattr(sae, name).copy_(tensors[name])
    sae._threshold_updates = 1
    return sae.to(device).eval(), card
