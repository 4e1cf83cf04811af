"""SAE storage: ``cfg.json`` + ``sae_weights.safetensors`` (SAELens 6 format) + ``card.json``.

The directory loads as it is in sae-lens 6 (``sae_lens.SAE.load_from_disk(dir)``), and its
``encode`` of RAW hooked activations gives our codes:

- ``sae_weights.safetensors`` holds ``W_enc (d_in, d_sae)``, ``W_dec (d_sae, d_in)``,
  ``b_enc (d_sae,)``, ``b_dec (d_in,)`` float32 in the RAW activation space: our fixed
  ``activation_scale`` s is folded in the way SAELens folds its own normalisation factor
  (``W_enc * s``, ``W_dec / s``, ``b_dec / s``, ``b_enc`` unchanged), so
  ``(x - b_dec) @ W_enc + b_enc`` of raw ``x`` equals our pre-activations of ``x``. A BatchTopK SAE
  also stores ``threshold (d_sae,)``, the global inference threshold.
- ``cfg.json`` carries the SAELens keys (``architecture``: BatchTopK is stored as ``jumprelu``,
  its inference form; TopK as ``topk``; ReLU as ``standard``; ``d_in``, ``d_sae``, ``k``,
  ``dtype``, ``apply_b_dec_to_input``, ``normalize_activations: none``, ``metadata``) next to
  every :class:`SAEConfig` field (SAELens ignores those) and ``weights_space: raw``.

:func:`load_sae` un-folds the scale again (in float64, rounded once), so the loaded SAE works
in the scaled space with unit-norm decoder rows as training left it. Directories written
before this format (no ``weights_space`` key: tensors in the scaled space, ``architecture``
our own name) still load unchanged.

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

__all__ = ["CARD", "CFG", "SAELENS_ARCH", "WEIGHTS", "load_sae", "save_sae", "sha256_file"]

CFG, WEIGHTS, CARD = "cfg.json", "sae_weights.safetensors", "card.json"
_TENSORS = ("W_enc", "W_dec", "b_enc", "b_dec", "threshold")
# Our architecture -> the SAELens 6 architecture of its inference form.
SAELENS_ARCH = {"batchtopk": "jumprelu", "topk": "topk", "relu": "standard"}
# The SAELens format version written (>= 6.0: sae-lens reads cfg.json as it is).
SAELENS_FORMAT_VERSION = "6.0.0"
# cfg.json keys that are not SAEConfig fields (SAELens keys and our format marker).
_FORMAT_KEYS = (
    "architecture",
    "dtype",
    "device",
    "apply_b_dec_to_input",
    "normalize_activations",
    "reshape_activations",
    "rescale_acts_by_decoder_norm",
    "metadata",
    "weights_space",
)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, path)


def _folded(sae: SAE) -> dict[str, torch.Tensor]:
    """The SAE's tensors in the raw activation space (scale folded in, float64 then float32)."""
    s = sae.scale
    get = {name: getattr(sae, name).detach().cpu().double() for name in _TENSORS}
    out = {
        "W_enc": get["W_enc"] * s,
        "W_dec": get["W_dec"] / s,
        "b_enc": get["b_enc"],
        "b_dec": get["b_dec"] / s,
    }
    if sae.cfg.arch == "batchtopk":
        out["threshold"] = get["threshold"]
    return {name: t.float().contiguous() for name, t in out.items()}


def _unfolded(tensors: dict[str, torch.Tensor], s: float) -> dict[str, torch.Tensor]:
    """Inverse of :func:`_folded`: raw-space tensors -> our scaled space."""
    out = {name: t.double() for name, t in tensors.items()}
    for name, factor in (("W_enc", 1.0 / s), ("W_dec", s), ("b_dec", s)):
        if name in out:
            out[name] = out[name] * factor
    return {name: t.float() for name, t in out.items()}


def save_sae(sae: SAE, out_dir: str | Path, card: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``cfg.json``, ``sae_weights.safetensors`` and ``card.json`` into ``out_dir``.

    ``card`` supplies the descriptive fields (id, model_id, hook, cohorts, case_ids, metrics...);
    architecture, sizes and the weights checksum are filled in here. Returns the card written.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    full = dict(card or {})
    cfg = sae.cfg.to_dict()
    metadata: dict[str, Any] = {"sae_lens_version": SAELENS_FORMAT_VERSION}
    if full.get("model_id"):
        metadata["model_name"] = str(full["model_id"])
    if full.get("hook"):
        metadata["hook_name"] = str(full["hook"])
    sae_lens_keys = {
        "architecture": SAELENS_ARCH[sae.cfg.arch],
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": metadata,
        "weights_space": "raw",
    }
    if sae.cfg.arch == "topk":
        sae_lens_keys["rescale_acts_by_decoder_norm"] = False
    _write_json(out / CFG, {**cfg, **sae_lens_keys})
    tmp = out / (WEIGHTS + ".tmp")
    save_file(_folded(sae), str(tmp), metadata={"format": "pt"})
    os.replace(tmp, out / WEIGHTS)
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
    try:
        raw = json.loads((root / CFG).read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptSAE(f"{CFG} of SAE {root.name!r} is not JSON ({exc}); re-save or re-copy it") from exc
    if not isinstance(raw, dict):
        raise CorruptSAE(f"{CFG} of SAE {root.name!r} is not a JSON object; re-save or re-copy it")
    space = raw.get("weights_space", "scaled")
    for key in _FORMAT_KEYS:
        raw.pop(key, None)
    cfg = SAEConfig.from_dict(raw)
    card = json.loads((root / CARD).read_text()) if (root / CARD).is_file() else {}
    expected = card.get("weights_sha256")
    if expected and sha256_file(root / WEIGHTS) != expected:
        raise CorruptSAE(
            f"{WEIGHTS} of SAE {root.name!r} does not match its card's sha256; re-save or re-copy it"
        )
    tensors = load_file(str(root / WEIGHTS))
    sae = build_sae(cfg)
    if space == "raw":
        tensors = _unfolded(tensors, sae.scale)
        if "threshold" not in tensors and cfg.arch != "batchtopk":
            tensors["threshold"] = torch.zeros(cfg.d_sae)
    elif space != "scaled":
        raise CorruptSAE(f"{CFG} of SAE {root.name!r}: unknown weights_space {space!r} (raw or scaled)")
    for name in _TENSORS:
        if name not in tensors or tensors[name].shape != getattr(sae, name).shape:
            raise CorruptSAE(
                f"{WEIGHTS} of SAE {root.name!r}: {name} missing or of the wrong shape for cfg.json"
            )
        with torch.no_grad():
            getattr(sae, name).copy_(tensors[name])
    sae._threshold_updates = 1
    return sae.to(device).eval(), card
