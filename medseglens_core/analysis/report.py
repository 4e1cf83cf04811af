"""The zoo's cross-dataset diff report: ``report.json`` (schema below) + self-contained ``report.html``.

JSON schema (``schema_version`` 1; documented also in docs/diff-report.md)::

    {
      "schema_version": 1,
      "created": "2026-01-01T00:00:00+00:00",     # UTC, ISO 8601
      "source_cohort": "adult",                   # reference cohort of the tests
      "criteria": {"alpha", "min_rank_biserial", "min_log2_ratio", "metric", "test",
                   "min_pooled_rate", "log_eps", "n_perm", "tumour_contrast",
                   "region_contrasts", "min_rate"},
      "cohorts": {"<cohort>": {"n_cases": int, "case_ids": [str]}},
      "models": {
        "<model_id>": {
          "arch": str, "sae_id": str, "hook": str, "d_sae": int, "n_alive": int,
          "firing_rate": {"<cohort>": [float] * d_sae},  # mean over cases of per-case firing rate
          "counts": {"<cohort>": {"reference": str | [str], "shared": int, "specific": int,
                                  "specific_up": int, "specific_down": int}},
          "specific": {"<cohort>": [{"latent", "p", "q", "effect", "log2_ratio", "target_rate",
                                     "reference_rate", "direction", "region",
                                     "families": {"<family>": "up" | "down"}}]},
          "reliance": {"<region>": {"<cohort>": [{"latent": int, "attribution": float}]}},
          "cohort_sae_alignment": [{"cohort_a", "cohort_b", "threshold", "fraction_above", "n_pairs"}],
          "ood": {"calibrated": bool, "cohorts": {"<cohort>": {"n_cases", "n_flagged",
                  "flagged_fraction", "median_score", "nearest_cohort": {"<cohort>": int}}}},
          "provenance": {"model_id", "model_sha256", "sae_id", "sae_sha256", "package_version",
                         "zoo_config_sha256", "seed", "device", "precision", "torch_version"}
        }
      },
      "crossarch": [{"model_a", "model_b", "shared_fraction", "n_significant", "n_alive_a",
                     "n_alive_b", "n_slices", "n_perm", "alpha", "null_max",
                     "pairs": [{"latent_a", "latent_b", "corr", "p", "q", "region_a", "region_b"}]}],
      "timing_s": float
    }

``counts``: for the source cohort the reference is every other cohort pooled, for any other
cohort it is the source cohort. ``shared`` = latents that fire (mean firing rate >= min_rate)
in both the cohort and its reference and are not population-specific; ``specific`` =
``specific_up + specific_down`` (see :mod:`medseglens_core.analysis.diff` for the test).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from medseglens_core.analysis.casepass import input_size_of, load_if_path
from medseglens_core.analysis.crossarch import crossarch_from_cases
from medseglens_core.analysis.diff import (
    CaseLatentStats,
    CohortStats,
    DiffCriteria,
    align_saes,
    cohort_case_stats,
    compare_cohorts,
    reliance,
)
from medseglens_core.analysis.encode import REGION_NAMES, resolve_hook
from medseglens_core.analysis.ood import cohort_ood
from medseglens_core.analysis.zoo import ZooEntry, discover_cohorts, discover_zoo
from medseglens_core.errors import InvalidInput
from medseglens_core.provenance import provenance

SCHEMA_VERSION = 1
REPORT_KEYS = (
    "schema_version",
    "created",
    "source_cohort",
    "criteria",
    "cohorts",
    "models",
    "crossarch",
    "timing_s",
)


def cohort_counts(
    stats: CaseLatentStats, source: str, criteria: DiffCriteria, min_rate: float = 1e-3
) -> tuple[dict[str, dict], dict[str, list], dict[str, tuple]]:
    """Per cohort: counts of shared / specific latents, the specific latents, and volcano data.

    The volcano data per cohort is ``(effect (d,), q (d,), specific (d,) bool, reference,
    tested (d,) bool)``.
    """
    counts, specific, volcano = {}, {}, {}
    assoc = stats.region_enrichment()
    for cohort in stats.cohorts:
        ref: str | list[str] = [c for c in stats.cohorts if c != source] if cohort == source else source
        if not ref:
            continue
        diffs = compare_cohorts(stats, cohort, ref, criteria)
        alive = {d.latent for d in diffs if d.target_rate >= min_rate and d.reference_rate >= min_rate}
        spec = [d for d in diffs if d.specific]
        by_latent = sorted(diffs, key=lambda d: d.latent)
        volcano[cohort] = (
            np.array([d.effect for d in by_latent]),
            np.array([d.q for d in by_latent]),
            np.array([d.specific for d in by_latent]),
            ref if isinstance(ref, str) else "others",
            np.array([d.tested for d in by_latent]),
        )
        up = sum(d.direction == "up" for d in spec)
        counts[cohort] = {
            "reference": ref,
            "shared": len(alive - {d.latent for d in spec}),
            "specific": len(spec),
            "specific_up": up,
            "specific_down": len(spec) - up,
        }
        specific[cohort] = [{**asdict(d), "region": _region_name(assoc[d.latent])} for d in spec]
        for row in specific[cohort]:
            row.pop("specific")
            row.pop("tested")
    return counts, specific, volcano


def _region_name(fractions: np.ndarray) -> str:
    return REGION_NAMES[int(np.argmax(fractions))] if np.sum(fractions) > 0 else "none"


def _model_section(
    entry: ZooEntry,
    cases: dict[str, list[Any]],
    source: str,
    criteria: DiffCriteria,
    regions: tuple[str, ...],
    min_rate: float,
    max_slices: int | None,
    progress: Callable[[dict], None] | None,
) -> tuple[dict[str, Any], dict[str, tuple], Any, Any]:
    from medseglens_core.models.card import load_model
    from medseglens_core.sae.io import load_sae

    model, mcard = load_model(entry.model_dir)
    sae, scard = load_sae(entry.sae_dir)
    hook = resolve_hook(model, scard.get("hook"), mcard)
    stats = cohort_case_stats(
        model, sae, cases, hook=hook, card=mcard, regions=regions, max_slices=max_slices, progress=progress
    )
    counts, specific, volcano = cohort_counts(stats, source, criteria, min_rate)
    names, rates = stats.cohort_firing_rate()
    out = {
        "arch": str(mcard.get("architecture", getattr(model, "arch", ""))),
        "sae_id": entry.sae_id,
        "hook": hook,
        "d_sae": stats.d_sae,
        "n_alive": int((rates.max(axis=0) >= min_rate).sum()),
        "firing_rate": {c: [round(float(v), 6) for v in rates[i]] for i, c in enumerate(names)},
        "counts": counts,
        "specific": specific,
        "reliance": {
            r: {
                c: [{"latent": j, "attribution": a} for j, a in top]
                for c, top in reliance(stats, r, 10).items()
            }
            for r in regions
        },
        "cohort_sae_alignment": _cohort_alignment(entry, source),
    }
    out["controls"] = diff_controls(
        model, sae, hook, mcard, cases[source], stats[source], source, criteria, max_slices
    )
    return out, volcano, model, sae


CONTROL_SHIFT = "modality_swap"  # planted acquisition shift of the positive control
CONTROL_SEED = 0


def _subset(cs: CohortStats, idx: np.ndarray) -> CohortStats:
    """The cases ``idx`` of a cohort's statistics."""
    return CohortStats(
        case_ids=[cs.case_ids[i] for i in idx],
        firing_rate=cs.firing_rate[idx],
        mean_activation=cs.mean_activation[idx],
        mean_active=cs.mean_active[idx],
        region_mass=cs.region_mass[idx],
        n_tokens=cs.n_tokens[idx],
        attribution={k: v[idx] for k, v in cs.attribution.items()},
        region_tokens=None if cs.region_tokens is None else cs.region_tokens[idx],
    )


def null_control(
    source_stats: CohortStats, d_sae: int, criteria: DiffCriteria, seed: int = CONTROL_SEED
) -> dict:
    """Same-cohort random split (half vs half) through the same test: must find 0 latents."""
    n = len(source_stats.case_ids)
    if n < 4:
        return {"found": None, "reason": f"{n} source cases (< 4)"}
    perm = np.random.default_rng(seed).permutation(n)
    a, b = np.sort(perm[: n // 2]), np.sort(perm[n // 2 :])
    st = CaseLatentStats(d_sae=d_sae, cohorts={"A": _subset(source_stats, a), "B": _subset(source_stats, b)})
    found = [d.latent for d in compare_cohorts(st, "A", "B", criteria) if d.specific]
    return {"found": len(found), "latents": found, "n_a": len(a), "n_b": len(b), "seed": seed}


def diff_controls(
    model: Any,
    sae: Any,
    hook: str,
    mcard: dict,
    source_cases: list[Any],
    source_stats: CohortStats,
    source: str,
    criteria: DiffCriteria,
    max_slices: int | None,
) -> dict[str, dict]:
    """Positive control (a planted shift on the held-out source cases vs the same cases
    unshifted, same test) and null control (a random split of the source cohort)."""
    from medseglens_core.data.shifts import apply_shift

    loaded = [load_if_path(c, source) for c in source_cases]
    planted = [
        replace(c, image=apply_shift(c, CONTROL_SHIFT, seed=CONTROL_SEED), case_id=c.case_id) for c in loaded
    ]
    pst = cohort_case_stats(model, sae, {"planted": planted}, hook=hook, card=mcard, max_slices=max_slices)
    st = CaseLatentStats(d_sae=pst.d_sae, cohorts={"planted": pst["planted"], "unshifted": source_stats})
    found = [d.latent for d in compare_cohorts(st, "planted", "unshifted", criteria) if d.specific]
    return {
        "positive": {
            "found": len(found),
            "latents": found,
            "shift": CONTROL_SHIFT,
            "seed": CONTROL_SEED,
            "cohort": source,
            "n_cases": len(loaded),
        },
        "null": null_control(source_stats, pst.d_sae, criteria),
    }


def _cohort_alignment(entry: ZooEntry, source: str, threshold: float = 0.7) -> list[dict[str, Any]]:
    if source not in entry.cohort_saes or len(entry.cohort_saes) < 2:
        return []
    from medseglens_core.sae.io import load_sae

    ref, _ = load_sae(entry.cohort_saes[source])
    out = []
    for cohort, path in entry.cohort_saes.items():
        if cohort == source:
            continue
        other, _ = load_sae(path)
        al = align_saes(ref.W_dec, other.W_dec, threshold)
        out.append(
            {
                "cohort_a": source,
                "cohort_b": cohort,
                "threshold": threshold,
                "fraction_above": al.fraction_above,
                "n_pairs": len(al.pairs),
            }
        )
    return out


def _pick_source(entries: list[ZooEntry], cohorts: list[str], source: str | None) -> str:
    if source is None:
        source = next((e.source_cohort for e in entries if e.source_cohort in cohorts), None)
    if source is None:
        source = "adult" if "adult" in cohorts else cohorts[0]
    if source not in cohorts:
        raise InvalidInput(f"source cohort {source!r} has no cases in the data directory; have {cohorts}")
    return source


def _device_of(model: Any) -> str:
    return str(next(model.parameters()).device)


def build_diff_report(
    zoo_dir: Path | str,
    data_dir: Path | str,
    out_dir: Path | str,
    *,
    source: str | None = None,
    max_cases_per_cohort: int = 20,
    criteria: DiffCriteria = DiffCriteria(),
    regions: tuple[str, ...] = ("SNFH",),
    min_rate: float = 1e-3,
    crossarch_cases_per_cohort: int = 2,
    n_perm: int = 500,
    grid: int = 16,
    max_slices_per_case: int | None = 24,
    crossarch_slices: int = 64,
    crossarch_latents: int | None = 128,
    progress: Callable[[dict], None] | None = None,
) -> dict[str, Any]:
    """Diff every model of ``zoo_dir`` that has an SAE over the cohorts under ``data_dir``.

    Writes ``out_dir/report.json`` (schema in the module docstring) and ``out_dir/report.html``;
    returns the JSON dict. ``max_cases_per_cohort`` cases per cohort (sorted by folder name) are
    analysed; the first ``crossarch_cases_per_cohort`` of each feed the cross-architecture
    alignment (``n_perm`` permutations, ``grid x grid`` common grid). Per-case statistics use at
    most ``max_slices_per_case`` evenly spaced brain slices (None: all) to bound the run time.
    """
    t0 = time.perf_counter()
    entries = discover_zoo(zoo_dir)
    case_dirs = discover_cohorts(data_dir, max_cases_per_cohort)
    src = _pick_source(entries, list(case_dirs), source)
    cases = {c: [load_if_path(p, c) for p in paths] for c, paths in case_dirs.items()}
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "source_cohort": src,
        "criteria": {**asdict(criteria), "min_rate": min_rate},
        "cohorts": {c: {"n_cases": len(v), "case_ids": [k.case_id for k in v]} for c, v in cases.items()},
        "models": {},
        "crossarch": [],
    }
    loaded, extras = {}, {}
    for entry in entries:
        section, volcano, model, sae = _model_section(
            entry, cases, src, criteria, regions, min_rate, max_slices_per_case, progress
        )
        section["ood"] = cohort_ood(
            zoo_dir,
            model,
            sae,
            section["hook"],
            cases,
            [str(c) for c in entry.sae_card.get("cohorts") or cases],
        )
        section["provenance"] = provenance(
            entry.model_dir, entry.sae_dir, zoo=zoo_dir, device=_device_of(model)
        )
        report["models"][entry.model_id] = section
        loaded[entry.model_id] = (model, sae, section["hook"], input_size_of(model, entry.model_card))
        extras[entry.model_id] = volcano
    report["crossarch"] = _crossarch(
        loaded,
        report,
        cases,
        crossarch_cases_per_cohort,
        n_perm,
        grid,
        criteria,
        crossarch_slices,
        crossarch_latents,
        progress,
    )
    report["timing_s"] = round(time.perf_counter() - t0, 2)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    from medseglens_core.analysis.report_page import write_report_html

    write_report_html(out / "report.html", report, loaded, cases, src, extras)
    return report


def _crossarch(
    loaded, report, cases, per_cohort, n_perm, grid, criteria, max_slices, max_latents, progress
) -> list[dict[str, Any]]:
    ids = sorted(loaded)
    subset = [c for v in cases.values() for c in v[:per_cohort]]
    out = []
    for i, a in enumerate(ids):
        for b in ids[i + 1 :]:
            if report["models"][a]["arch"] == report["models"][b]["arch"]:
                continue
            (ma, sa, ha, za), (mb, sb, hb, zb) = loaded[a], loaded[b]
            res = crossarch_from_cases(
                ma,
                sa,
                ha,
                za,
                mb,
                sb,
                hb,
                zb,
                subset,
                grid=grid,
                n_perm=n_perm,
                max_slices=max_slices,
                max_latents=max_latents,
                alpha=criteria.alpha,
                progress=progress,
            )
            out.append({"model_a": a, "model_b": b, **res.to_dict()})
    return out
