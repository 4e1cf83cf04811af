"""Latent cards: what every latent of one SAE does, across cohorts and regions.

A card per latent holds:

- ``firing_rate`` / ``mean_activation`` per cohort: computed per CASE (fraction of the case's
  tokens where the latent fires; mean code over the case's tokens), then averaged over the
  cohort's cases;
- ``region``: fraction of its activation mass over healthy (label 0) / NCR / SNFH / ET tokens;
- ``top_examples``: the ``n_examples`` tokens where it is largest, as
  ``{"case_id", "cohort", "z", "y", "x", "value"}`` (``z`` on the case grid, ``y, x`` on the
  hook grid), renderable as a PNG grid of crops with :func:`render_examples`.

Input: the activation shards the SAE was trained on (tokens + provenance, see
``medseglens_core.sae.shards``), via :func:`cards_from_shards`; or cases directly via
:func:`cards_from_stats` on :func:`~medseglens_core.analysis.diff.cohort_case_stats` output
(no examples then).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseglens_core.analysis.diff import CaseLatentStats
from medseglens_core.analysis.encode import REGION_NAMES, SAELike
from medseglens_core.errors import InvalidInput


def _merge_top(vals: torch.Tensor, idx: torch.Tensor, new_vals: torch.Tensor, new_idx: torch.Tensor, n: int):
    v = torch.cat([vals, new_vals], dim=0)
    i = torch.cat([idx, new_idx], dim=0)
    top = torch.topk(v, k=min(n, v.shape[0]), dim=0)
    return top.values, torch.gather(i, 0, top.indices)


@torch.no_grad()
def cards_from_shards(
    sae: SAELike, shards: Any, n_examples: int = 8, chunk: int = 32768
) -> list[dict[str, Any]]:
    """One card per latent from an ``ActivationShards`` set (tokens + provenance).

    Tokens are encoded shard by shard; memory is one chunk of codes plus ``n_examples x d_sae``.
    """
    cases = shards.cases
    if not cases:
        raise InvalidInput("the activation shards carry no case provenance; re-collect them with case ids")
    d = int(sae.W_dec.shape[0])
    n_cases = len(cases)
    fire = np.zeros((n_cases, d))
    act = np.zeros((n_cases, d))
    count = np.zeros(n_cases)
    mass = np.zeros((d, 4))
    top_v = torch.zeros(0, d)
    top_i = torch.zeros(0, d, dtype=torch.long)
    prov_all: dict[str, list[np.ndarray]] = {k: [] for k in ("case", "z", "y", "x")}
    offset = 0
    for s in range(len(shards.shards)):
        tokens, prov = shards.tokens(s), shards.provenance(s)
        for k in prov_all:
            prov_all[k].append(np.asarray(prov[k]))
        for a in range(0, tokens.shape[0], chunk):
            z = sae.encode(torch.from_numpy(np.array(tokens[a : a + chunk], dtype=np.float32))).float()
            case = torch.from_numpy(np.asarray(prov["case"][a : a + chunk], dtype=np.int64))
            lab = torch.from_numpy(np.asarray(prov["label"][a : a + chunk], dtype=np.int64)).clamp(0, 3)
            fire += torch.zeros(n_cases, d, dtype=torch.float64).index_add_(0, case, (z > 0).double()).numpy()
            act += torch.zeros(n_cases, d, dtype=torch.float64).index_add_(0, case, z.double()).numpy()
            count += np.bincount(case.numpy(), minlength=n_cases)
            mass += torch.zeros(4, d, dtype=torch.float64).index_add_(0, lab, z.double()).T.numpy()
            idx = torch.arange(offset + a, offset + a + z.shape[0]).expand(d, -1).T
            top_v, top_i = _merge_top(top_v, top_i, z, idx, n_examples)
        offset += tokens.shape[0]
    prov_cat = {k: np.concatenate(v) for k, v in prov_all.items()}
    per_case_fire = fire / np.maximum(count, 1)[:, None]
    per_case_act = act / np.maximum(count, 1)[:, None]
    cohorts = sorted({str(c.get("cohort")) for c in cases})
    member = {
        c: np.array([str(k.get("cohort")) == c and count[i] > 0 for i, k in enumerate(cases)])
        for c in cohorts
    }
    region = mass / np.maximum(mass.sum(axis=1, keepdims=True), 1e-12)
    cards = []
    for j in range(d):
        examples = []
        for v, t in zip(top_v[:, j].tolist(), top_i[:, j].tolist(), strict=True):
            if v <= 0:
                continue
            c = cases[int(prov_cat["case"][t])]
            examples.append(
                {
                    "case_id": c.get("case_id"),
                    "cohort": c.get("cohort"),
                    "z": int(prov_cat["z"][t]),
                    "y": int(prov_cat["y"][t]),
                    "x": int(prov_cat["x"][t]),
                    "value": float(v),
                }
            )
        cards.append(
            _card(
                j,
                {c: per_case_fire[m, j] for c, m in member.items()},
                {c: per_case_act[m, j] for c, m in member.items()},
                region[j],
                examples,
            )
        )
    return cards


def _card(
    j: int,
    fire: dict[str, np.ndarray],
    act: dict[str, np.ndarray],
    region: np.ndarray,
    examples: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "latent": j,
        "firing_rate": {c: float(v.mean()) if v.size else 0.0 for c, v in fire.items()},
        "mean_activation": {c: float(v.mean()) if v.size else 0.0 for c, v in act.items()},
        "n_cases": {c: int(v.size) for c, v in fire.items()},
        "region": {name: float(region[k]) for k, name in enumerate(REGION_NAMES)},
        "top_examples": examples,
    }


def cards_from_stats(stats: CaseLatentStats) -> list[dict[str, Any]]:
    """Cards (without examples) from per-case statistics computed directly on cases."""
    region = stats.region_association()
    return [
        _card(
            j,
            {c: s.firing_rate[:, j] for c, s in stats.cohorts.items()},
            {c: s.mean_activation[:, j] for c, s in stats.cohorts.items()},
            region[j],
            [],
        )
        for j in range(stats.d_sae)
    ]


def write_cards(cards: list[dict[str, Any]], out_dir: Path | str) -> Path:
    """Write ``out_dir/cards.json`` (a list of cards, one per latent); returns its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cards.json").write_text(json.dumps(cards, indent=1) + "\n")
    return out / "cards.json"


def render_examples(
    card: dict[str, Any],
    cases: dict[str, Any],
    input_size: int,
    hook_size: int,
    out_path: Path | str,
    crop: int = 32,
) -> Path:
    """PNG grid of a card's top examples: FLAIR crops (model grid) with the token's patch marked.

    Args:
        cases: ``{case_id: Case}`` for the examples' cases (others are skipped).
        input_size: model input side ``S``; ``hook_size``: hook grid side ``h`` (token = S/h px).
        crop: side of each crop in model pixels.
    """
    from medseglens_core.data.preprocess import prepare_case
    from medseglens_core.reports.plots import grid_png

    scale = input_size / hook_size
    panels, titles, prepared = [], [], {}
    for ex in card["top_examples"]:
        case = cases.get(ex["case_id"])
        if case is None:
            continue
        if ex["case_id"] not in prepared:
            prepared[ex["case_id"]] = prepare_case(case, input_size)
        p = prepared[ex["case_id"]]
        k = ex["z"] - p.record.crop[4]
        if not 0 <= k < p.slices.shape[0]:
            continue
        img = p.slices[k, 3].numpy()
        cy, cx = (ex["y"] + 0.5) * scale, (ex["x"] + 0.5) * scale
        y0 = int(np.clip(cy - crop / 2, 0, input_size - crop)) if input_size > crop else 0
        x0 = int(np.clip(cx - crop / 2, 0, input_size - crop)) if input_size > crop else 0
        mark = np.zeros_like(img)
        mark[
            int(ex["y"] * scale) : int((ex["y"] + 1) * scale),
            int(ex["x"] * scale) : int((ex["x"] + 1) * scale),
        ] = 1
        # rows of a model slice are the shard's ``y`` (hook row), columns its ``x`` (hook column)
        panels.append((img[y0 : y0 + crop, x0 : x0 + crop], mark[y0 : y0 + crop, x0 : x0 + crop]))
        titles.append(f"{ex['case_id']} z={ex['z']} ({ex['value']:.2g})")
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(grid_png(panels, titles))
    return out
