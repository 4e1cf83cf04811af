"""Saving and loading a model directory: ``weights.safetensors`` + ``card.json``.

The card is plain JSON. :func:`save_model` fills the fields it owns (architecture, config,
hook points, default hook, input spec, label convention, weights sha256, package version)
and keeps every other field the caller gives (id, training cohorts and case ids, validation
Dice, training time...). :func:`load_model` rebuilds the model from the card's config and
checks the weights' checksum.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from medseglens_core import __version__
from medseglens_core.checksums import sha256_file
from medseglens_core.data.preprocess import DEFAULT_MARGIN_MM
from medseglens_core.errors import InvalidInput, NotFound
from medseglens_core.io.case import MODALITIES
from medseglens_core.models.base import SegModel, build_model

WEIGHTS = "weights.safetensors"
CARD = "card.json"

LABEL_CONVENTION = {
    "labels": {"0": "background", "1": "NCR", "2": "SNFH", "3": "ET"},
    "regions": {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]},
    "standard": "BraTS 2023",
}


class CorruptModel(InvalidInput):
    """A model directory whose weights or card cannot be read or do not match."""


def input_spec(model: SegModel) -> dict[str, Any]:
    """What the model expects: modalities, slice size and the normalisation chain."""
    return {
        "modalities": list(MODALITIES),
        "input_size": model.cfg.input_size,
        "slice_axis": "axial [:, :, z] of the RAS canonical volume",
        "normalisation": "z-score per modality inside the brain mask (nonzero in any modality), 0 outside",
        "crop": f"brain bounding box + {DEFAULT_MARGIN_MM} mm in-plane, padded to a square field of view",
        "resample": "bilinear (antialiased) in-plane to input_size x input_size",
    }


def save_model(model: SegModel, card: dict[str, Any], out_dir: str | Path) -> dict[str, Any]:
    """Write ``out_dir/weights.safetensors`` and ``out_dir/card.json``; returns the full card."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS))
    full = {
        **card,
        "architecture": model.arch,
        "config": model.config,
        "hook_points": list(model.hook_points),
        "default_hook": card.get("default_hook", model.default_hook),
        "input_spec": input_spec(model),
        "label_convention": LABEL_CONVENTION,
        "weights_sha256": sha256_file(out / WEIGHTS),
        "package_version": __version__,
    }
    full.setdefault("id", out.name)
    (out / CARD).write_text(json.dumps(full, indent=2, sort_keys=True) + "\n")
    return full


def read_card(model_dir: str | Path) -> dict[str, Any]:
    """The card of a model directory (no weights loaded)."""
    path = Path(model_dir) / CARD
    if not path.is_file():
        raise NotFound(f"no model card at {path}; pass a directory written by train-model or save_model")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CorruptModel(f"{path} is not valid JSON ({exc}); retrain or restore the model") from exc


def load_model(
    model_dir: str | Path, *, device: str | torch.device = "cpu"
) -> tuple[SegModel, dict[str, Any]]:
    """Load ``(model, card)`` from a directory written by :func:`save_model`; model in eval mode."""
    card = read_card(model_dir)
    weights = Path(model_dir) / WEIGHTS
    if not weights.is_file():
        raise NotFound(f"no weights at {weights}; the model directory is incomplete")
    if "weights_sha256" in card and sha256_file(weights) != card["weights_sha256"]:
        raise CorruptModel(f"{weights} does not match the sha256 in its card; re-copy or retrain the model")
    for key in ("architecture", "config"):
        if key not in card:
            raise CorruptModel(f"model card {Path(model_dir) / CARD} lacks {key!r}")
    model = build_model(card["architecture"], **card["config"])
    try:
        model.load_state_dict(load_file(str(weights)), strict=True)
    except (SafetensorError, RuntimeError) as exc:
        raise CorruptModel(f"weights at {weights} do not fit a {card['architecture']} model: {exc}") from exc
    return model.to(device).eval(), card
