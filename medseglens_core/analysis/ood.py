"""Out-of-distribution flag: is this scan unlike every cohort the model and its SAE were built on?

Two cheap views of one scan, both from what a segmentation computes anyway:

* **latent profile**: the firing rate of every SAE latent over the scan's brain tokens at the
  SAE's hook, as log rates ``l_j = log(rate_j + EPS)`` (the population gate's convention,
  ``interventions/gate.py``). Against each reference cohort ``c`` (the SAE's training cases of
  that cohort): ``D_c = sqrt(mean_j ((l_j - mean_cj) / sd_j)^2)`` with ``sd_j`` the pooled
  within-cohort standard deviation, floored at ``SD_FLOOR``; the latent distance is ``min_c D_c``
  and its argmin the nearest cohort.
* **input statistics** (:func:`input_stats`): brain volume (mL), brain fraction of the field
  of view, brain extent per axis (mm), per-modality skewness and kurtosis of the normalised
  intensities, and the six pairwise correlations between modalities. Against each cohort: the
  largest ``|x_s - mean_cs| / sd_s`` over the statistics (pooled ``sd_s``, floored at 5% of the
  statistic's typical size); the input distance is the minimum over cohorts.

**Calibration** (:func:`fit_calibration`): the reference is fitted on the training cases; each
distance's threshold is ``MARGIN`` (1.25) times its largest value over the *validation* cases
(held-out cases no model or SAE was trained on). ``score = max(latent / its threshold, input /
its threshold)``, so ``score > 1`` is out of distribution. Without at least ``MIN_CALIBRATION``
validation cases there is no threshold: ``calibrated`` is false, ``score`` null, and only the
calibration-free rule below can flag.

**Rule** (no calibration needed): two modalities correlating above ``IDENTICAL_CORR`` (0.98)
inside the brain are the same image given twice (e.g. one T1 as all four inputs); no BraTS
sequence pair is that alike.

A flag never withholds the mask; it says the numbers may not mean what they mean in-distribution.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

MODALITIES = ("t1n", "t1c", "t2w", "t2f")
EPS = 1e-3  # interventions.spec.GATE_EPS
SD_FLOOR = 0.1
MARGIN = 1.25
MIN_CALIBRATION = 3
IDENTICAL_CORR = 0.98
SCHEMA_VERSION = 1


@dataclass
class CaseProfile:
    """One scan as the OOD check sees it: ``rates (d_sae,)`` (None without an SAE) and input stats."""

    rates: np.ndarray | None
    stats: dict[str, float]
    cohort: str | None = None
    case_id: str | None = None


def latent_rates(sae: Any, prefix_h: torch.Tensor | Sequence[torch.Tensor], prepared: Any) -> np.ndarray:
    """``(d_sae,)`` fraction of the scan's brain tokens on which each latent fires (code > 0).

    Brain tokens and codes exactly as :func:`medseglens_core.analysis.latents.summarise_latents`
    takes them (``encode_fast`` over the tokens whose patch is >= 50% brain).
    """
    from medseglens_core.analysis.encode import brain_token_mask, encode_fast, input_brain_mask, masked_tokens

    pieces = [prefix_h] if torch.is_tensor(prefix_h) else list(prefix_h)
    hw = (int(pieces[0].shape[2]), int(pieces[0].shape[3]))
    token_brain = brain_token_mask(input_brain_mask(torch.as_tensor(prepared.slices)), hw)
    with torch.no_grad():
        tokens = masked_tokens(pieces, token_brain)
        if tokens.shape[0] == 0:
            d_sae = int(getattr(getattr(sae, "cfg", None), "d_sae", 0) or sae.W_dec.shape[0])
            return np.zeros(d_sae, np.float64)
        codes, _ = encode_fast(sae, tokens)
        return (codes > 0).double().mean(0).cpu().numpy()


def input_stats(prepared: Any, spacing: Sequence[float], stride: int = 2) -> dict[str, float]:
    """Cheap statistics of the prepared input (see module doc); ``stride`` subsamples pixels."""
    brain = np.asarray(prepared.brain_mask, dtype=bool)
    sp = np.asarray(spacing, dtype=np.float64)
    out: dict[str, float] = {
        "brain_ml": float(brain.sum() * np.prod(sp) / 1000.0),
        "brain_fraction": float(brain.mean()) if brain.size else 0.0,
    }
    for axis, name in enumerate("xyz"):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(brain.any(axis=other))
        out[f"extent_{name}_mm"] = float((idx[-1] - idx[0] + 1) * sp[axis]) if idx.size else 0.0
    x = torch.as_tensor(prepared.slices)[:, :, ::stride, ::stride].detach().cpu().numpy()
    vals = np.moveaxis(x, 1, 0).reshape(x.shape[1], -1)
    vals = vals[:, np.any(vals != 0, axis=0)].astype(np.float64)
    n = vals.shape[1]
    if n < 10:
        for m in MODALITIES:
            out[f"skew_{m}"] = out[f"kurt_{m}"] = 0.0
        for a, b in itertools.combinations(MODALITIES, 2):
            out[f"corr_{a}_{b}"] = 0.0
        return out
    centred = vals - vals.mean(axis=1, keepdims=True)
    sd = np.sqrt((centred**2).mean(axis=1))
    safe = np.where(sd > 1e-12, sd, 1.0)
    z = centred / safe[:, None]
    z2 = z * z  # products, not ``**``: numpy's float power is ~10x slower
    skew, kurt = (z2 * z).mean(axis=1), (z2 * z2).mean(axis=1)
    for i, m in enumerate(MODALITIES):
        out[f"skew_{m}"] = float(skew[i]) if sd[i] > 1e-12 else 0.0
        out[f"kurt_{m}"] = float(kurt[i] - 3.0) if sd[i] > 1e-12 else 0.0
    corr = np.einsum("in,jn->ij", z, z) / n  # no BLAS thread pool for a 4 x 4 result
    for (i, a), (j, b) in itertools.combinations(enumerate(MODALITIES), 2):
        both = sd[i] > 1e-12 and sd[j] > 1e-12
        out[f"corr_{a}_{b}"] = float(corr[i, j]) if both else 1.0
    return out


def case_profile(model: Any, sae: Any | None, hook: str | None, prepared: Any, spacing, batch_size: int = 16):
    """:class:`CaseProfile` of a prepared case: the network prefix to ``hook`` (only with an SAE)."""
    rates = None
    if sae is not None:
        device = next(model.parameters()).device
        pieces = []
        with torch.no_grad():
            for start in range(0, prepared.slices.shape[0], batch_size):
                batch = torch.as_tensor(prepared.slices[start : start + batch_size]).to(device, torch.float32)
                pieces.append(model.run_prefix(batch, hook).h.float().cpu())
        rates = latent_rates(sae, pieces, prepared)
    return CaseProfile(rates, input_stats(prepared, spacing))


def _log(rates: np.ndarray) -> np.ndarray:
    return np.log(np.asarray(rates, dtype=np.float64) + EPS)


def _pooled_sd(groups: dict[str, np.ndarray], floor: np.ndarray | float) -> np.ndarray:
    """Pooled within-group standard deviation per column (rows: cases)."""
    ss = sum(((g - g.mean(axis=0)) ** 2).sum(axis=0) for g in groups.values())
    dof = sum(len(g) for g in groups.values()) - len(groups)
    sd = np.sqrt(ss / dof) if dof > 0 else np.zeros_like(next(iter(groups.values()))[0])
    return np.maximum(sd, floor)


def _latent_distances(cal: dict[str, Any], rates: np.ndarray) -> dict[str, float]:
    lat = cal["latent"]
    sd = np.asarray(lat["sd"])
    lr = _log(rates)
    return {c: float(np.sqrt(np.mean(((lr - np.asarray(mu)) / sd) ** 2))) for c, mu in lat["mean"].items()}


def _input_distances(cal: dict[str, Any], stats: dict[str, float]) -> dict[str, tuple[float, str]]:
    inp = cal["input"]
    names = inp["names"]
    x = np.array([stats.get(n, 0.0) for n in names])
    sd = np.asarray(inp["sd"])
    out = {}
    for c, mu in inp["mean"].items():
        z = np.abs(x - np.asarray(mu)) / sd
        k = int(np.argmax(z))
        out[c] = (float(z[k]), names[k])
    return out


def fit_calibration(
    reference: Sequence[CaseProfile], validation: Sequence[CaseProfile], **meta: Any
) -> dict[str, Any]:
    """The calibration document from reference (training) and validation profiles (module doc).

    ``meta`` (ids, sha256 of the weights, hook...) is stored alongside.
    """
    cohorts = sorted({p.cohort or "unknown" for p in reference})
    doc: dict[str, Any] = {"schema_version": SCHEMA_VERSION, **meta, "cohorts": {}}
    if not cohorts:
        return doc | {
            "calibrated": False,
            "latent": None,
            "input": None,
            "n_calibration": 0,
            "thresholds": None,
        }
    by = {c: [p for p in reference if (p.cohort or "unknown") == c] for c in cohorts}
    doc["cohorts"] = {c: {"n_reference": len(v)} for c, v in by.items()}
    names = sorted(reference[0].stats)
    stats = {c: np.array([[p.stats[n] for n in names] for p in v]) for c, v in by.items()}
    typical = np.abs(np.concatenate(list(stats.values()))).mean(axis=0)
    doc["input"] = {
        "names": names,
        "mean": {c: s.mean(axis=0).tolist() for c, s in stats.items()},
        "sd": _pooled_sd(stats, np.maximum(0.05 * typical, 1e-3)).tolist(),
    }
    if all(p.rates is not None for p in reference):
        logs = {c: np.stack([_log(p.rates) for p in v]) for c, v in by.items()}
        doc["latent"] = {
            "mean": {c: g.mean(axis=0).tolist() for c, g in logs.items()},
            "sd": _pooled_sd(logs, SD_FLOOR).tolist(),
        }
    else:
        doc["latent"] = None
    val = list(validation)
    lat_scores = [min(_latent_distances(doc, p.rates).values()) for p in val] if doc["latent"] else []
    inp_scores = [min(d for d, _ in _input_distances(doc, p.stats).values()) for p in val]
    doc["n_calibration"] = len(val)
    doc["calibration_cases"] = [
        {
            "case_id": p.case_id,
            "cohort": p.cohort,
            "latent": lat_scores[i] if lat_scores else None,
            "input": inp_scores[i],
        }
        for i, p in enumerate(val)
    ]
    doc["calibrated"] = len(val) >= MIN_CALIBRATION
    doc["thresholds"] = (
        {
            "latent": MARGIN * max(lat_scores) if lat_scores else None,
            "input": MARGIN * max(inp_scores),
            "margin": MARGIN,
        }
        if doc["calibrated"]
        else None
    )
    return doc


def assess(cal: dict[str, Any] | None, profile: CaseProfile) -> dict[str, Any]:
    """The ``ood`` block of one scan: ``{score, flagged, nearest_cohort, reasons, calibrated, ...}``."""
    reasons: list[str] = []
    stats = profile.stats
    pairs = [(k, v) for k, v in stats.items() if k.startswith("corr_")]
    if pairs:
        key, top = max(pairs, key=lambda kv: kv[1])
        if top > IDENTICAL_CORR:
            a, b = key.split("_")[1:3]
            reasons.append(
                f"modalities {a} and {b} are near-identical (correlation {top:.3f} inside the brain): "
                "the inputs look like one sequence given more than once"
            )
    out: dict[str, Any] = {
        "score": None,
        "flagged": False,
        "nearest_cohort": None,
        "reasons": reasons,
        "calibrated": bool(cal and cal.get("calibrated")),
        "latent_distance": None,
        "input_distance": None,
        "thresholds": None,
    }
    if cal and cal.get("input"):
        inp = _input_distances(cal, stats)
        near_in = min(inp, key=lambda c: inp[c][0])
        out["input_distance"], worst = inp[near_in]
        out["nearest_cohort"] = near_in
        if cal.get("latent") and profile.rates is not None:
            lat = _latent_distances(cal, profile.rates)
            out["nearest_cohort"] = min(lat, key=lat.get)
            out["latent_distance"] = lat[out["nearest_cohort"]]
        th = cal.get("thresholds") if cal.get("calibrated") else None
        if th:
            out["thresholds"] = {"latent": th.get("latent"), "input": th["input"]}
            parts = [out["input_distance"] / th["input"]]
            if out["latent_distance"] is not None and th.get("latent"):
                parts.append(out["latent_distance"] / th["latent"])
                if out["latent_distance"] > th["latent"]:
                    reasons.append(
                        f"SAE latent firing profile unlike every training cohort (distance "
                        f"{out['latent_distance']:.2f} > threshold {th['latent']:.2f}; nearest {out['nearest_cohort']})"
                    )
            if out["input_distance"] > th["input"]:
                reasons.append(
                    f"input statistic {worst} = {stats.get(worst, 0.0):.3g} is outside every training cohort "
                    f"({out['input_distance']:.1f} SD from the nearest, {near_in}; threshold {th['input']:.1f})"
                )
            out["score"] = float(max(parts))
    out["flagged"] = bool(reasons)
    return out


def uncalibrated(reason: str) -> dict[str, Any]:
    """An ``ood`` block when there is nothing to calibrate against (``reason`` says why)."""
    return {
        "score": None,
        "flagged": False,
        "nearest_cohort": None,
        "reasons": [],
        "calibrated": False,
        "latent_distance": None,
        "input_distance": None,
        "thresholds": None,
        "note": reason,
    }


def zoo_case_sets(
    zoo: Any, cohorts: Sequence[str], per_cohort: int = 12
) -> tuple[list[tuple[Any, str]], list[tuple[Any, str]]]:
    """``(reference, validation)`` case folders of a zoo, at most ``per_cohort`` each per cohort.

    Reference: the SAE's training cases (``sae.pipeline.split_cases`` on ``ZOO/data/train``).
    Validation: the cases that split holds out plus ``ZOO/data/val/<cohort>``: no model or SAE
    of the zoo was trained on them (the models' checkpoint choice saw ``adult`` val only).
    """
    from pathlib import Path

    from medseglens_core.io import find_cases
    from medseglens_core.sae.pipeline import split_cases

    root = Path(zoo) / "data"
    present = [c for c in cohorts if (root / "train" / c).is_dir()]
    if not present:
        return [], []
    train, held = split_cases(root / "train", present)
    for c in present:
        if (root / "val" / c).is_dir():
            held += [(p, c) for p in find_cases(root / "val" / c)]

    def cap(items):
        seen: dict[str, int] = {}
        out = []
        for p, c in items:
            seen[c] = seen.get(c, 0) + 1
            if seen[c] <= per_cohort:
                out.append((p, c))
        return out

    return cap(train), cap(held)


def profile_case_dir(model: Any, sae: Any | None, hook: str | None, case_dir: Any, cohort: str | None):
    """:class:`CaseProfile` of a case folder (load, prepare, prefix, profile)."""
    from medseglens_core.data.preprocess import prepare_case
    from medseglens_core.io import load_case

    case = load_case(case_dir, cohort=cohort)
    prepared = prepare_case(case, model.cfg.input_size)
    prof = case_profile(model, sae, hook, prepared, case.geometry.spacing)
    prof.cohort, prof.case_id = cohort, case.case_id
    return prof


def calibrate_from_zoo(
    zoo: Any, model: Any, sae: Any | None, hook: str | None, cohorts: Sequence[str], **meta: Any
) -> dict[str, Any]:
    """Fit the reference on the zoo's training cases and the thresholds on its validation cases."""
    ref_dirs, val_dirs = zoo_case_sets(zoo, cohorts)
    reference = [profile_case_dir(model, sae, hook, p, c) for p, c in ref_dirs]
    validation = [profile_case_dir(model, sae, hook, p, c) for p, c in val_dirs]
    doc = fit_calibration(reference, validation, hook=hook if sae is not None else None, **meta)
    if not reference:
        doc["note"] = "the zoo has no training cases to compare against (ZOO/data/train)"
    elif not doc["calibrated"]:
        doc["note"] = f"fewer than {MIN_CALIBRATION} validation cases: no threshold"
    return doc


def cohort_ood(
    zoo: Any,
    model: Any,
    sae: Any | None,
    hook: str | None,
    cases: dict[str, list[Any]],
    cohorts: Sequence[str],
) -> dict[str, Any]:
    """The diff report's per-cohort ``ood``: how many of each cohort's cases the flag marks.

    Calibrated exactly as the service calibrates (:func:`calibrate_from_zoo` on the zoo's training
    and validation cases of ``cohorts``); ``cases`` are loaded :class:`~medseglens_core.io.Case`
    objects per cohort (the report's cases, never used for calibration).
    """
    from medseglens_core.data.preprocess import prepare_case

    cal = calibrate_from_zoo(zoo, model, sae, hook, cohorts)
    out: dict[str, Any] = {"calibrated": bool(cal.get("calibrated")), "cohorts": {}}
    if cal.get("note"):
        out["note"] = cal["note"]
    for cohort, items in cases.items():
        blocks = []
        for case in items:
            prepared = prepare_case(case, model.cfg.input_size)
            blocks.append(assess(cal, case_profile(model, sae, hook, prepared, case.geometry.spacing)))
        scores = [b["score"] for b in blocks if b["score"] is not None]
        nearest: dict[str, int] = {}
        for b in blocks:
            if b["nearest_cohort"] is not None:
                nearest[b["nearest_cohort"]] = nearest.get(b["nearest_cohort"], 0) + 1
        out["cohorts"][cohort] = {
            "n_cases": len(blocks),
            "n_flagged": sum(b["flagged"] for b in blocks),
            "flagged_fraction": sum(b["flagged"] for b in blocks) / len(blocks) if blocks else 0.0,
            "median_score": float(np.median(scores)) if scores else None,
            "nearest_cohort": nearest,
        }
    return out
