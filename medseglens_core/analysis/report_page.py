"""The HTML page of the diff report: firing-rate heatmaps, volcano plots, tables, example maps."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseglens_core.analysis.casepass import prepare_for_analysis
from medseglens_core.analysis.encode import encode_maps
from medseglens_core.reports.html import Figure, Section, Table, write_html
from medseglens_core.reports.plots import heatmap_png, overlay_png, volcano_png


def latent_slice(
    model: Any, sae: Any, hook: str, size: int, case: Any, latent: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """``(t2f slice [x, y], latent map slice [x, y], z)`` at the axial slice where ``latent`` peaks."""
    prepared, slices, _, _ = prepare_for_analysis(case, size)
    maps = []
    with torch.no_grad():
        for i in range(0, slices.shape[0], 16):
            maps.append(
                encode_maps(sae, model.run_prefix(slices[i : i + 16], hook).h)[:, latent : latent + 1]
            )
    vol = prepared.to_case_grid(torch.cat(maps))[0]
    vol[~np.asarray(prepared.brain_mask, dtype=bool)] = 0
    z = int(np.argmax(vol.sum(axis=(0, 1))))
    return np.asarray(case.image[3][:, :, z]), vol[:, :, z], z


_TEST_NAMES = {
    "permutation": "case-label permutation test on log firing rate",
    "welch": "Welch t-test on log firing rate",
    "mwu": "Mann-Whitney U",
}


def _heatmap_columns(m: dict[str, Any], rates: np.ndarray, n: int = 60) -> np.ndarray:
    """Population-specific latents first (strongest first), then the most cohort-variable live ones."""
    cols: list[int] = []
    for diffs in m["specific"].values():
        for d in diffs[:15]:
            if d["latent"] not in cols:
                cols.append(d["latent"])
    logr = np.log10(rates + 1e-4)
    alive = np.flatnonzero(rates.max(axis=0) >= 1e-3)
    for j in alive[np.argsort(-logr[:, alive].std(axis=0), kind="stable")]:
        if len(cols) >= n:
            break
        if int(j) not in cols:
            cols.append(int(j))
    return np.array(cols[:n], dtype=int)


def _example_maps(mid: str, m: dict, src: str, loaded: dict, cases: dict) -> list[Figure]:
    """The strongest specific latent of each cohort, on a case of the cohort where it fires more."""
    model, sae, hook, size = loaded[mid]
    out = []
    for c, diffs in m["specific"].items():
        if c == src or not diffs:
            continue
        d = diffs[0]
        shown = c if d["direction"] == "up" else src
        case = cases[shown][0]
        bg, ov, z = latent_slice(model, sae, hook, size, case, d["latent"])
        out.append(
            Figure(
                overlay_png(bg, ov, f"{mid} latent {d['latent']} on {shown} (z={z})"),
                f"latent {d['latent']}: {d['direction']} in {c} vs {src} (q={d['q']:.2g}, "
                f"region {d['region']}); shown on {case.case_id}, axial z={z}, over T2-FLAIR",
            )
        )
    return out


def _model_sections(
    mid: str, m: dict[str, Any], src: str, loaded: dict, cases: dict, test: str
) -> list[Section]:
    cohorts = list(m["firing_rate"])
    rates = np.array([m["firing_rate"][c] for c in cohorts])
    order = _heatmap_columns(m, rates)
    figs = [
        Figure(
            heatmap_png(
                np.log10(rates[:, order] + 1e-4),
                cohorts,
                [str(j) for j in order],
                f"{mid}: firing rate per cohort (specific latents first, then most variable)",
                cbar_label="log10(firing rate + 1e-4)",
            )
        )
    ]
    rows = []
    for c, cnt in m["counts"].items():
        ref = cnt["reference"] if isinstance(cnt["reference"], str) else "+".join(cnt["reference"])
        rows.append([c, ref, cnt["shared"], cnt["specific_up"], cnt["specific_down"]])
    spec_rows = []
    for c, diffs in m["specific"].items():
        spec_rows += [
            [
                c,
                d["latent"],
                d["direction"],
                d["q"],
                d["effect"],
                d["target_rate"],
                d["reference_rate"],
                d["region"],
            ]
            for d in diffs[:10]
        ]
    examples = _example_maps(mid, m, src, loaded, cases)
    sec = Section(
        f"Model {mid} ({m['arch']}, SAE {m['sae_id']}, hook {m['hook']}, {m['n_alive']}/{m['d_sae']} live latents)",
        tables=[
            Table(
                ["cohort", "reference", "shared", "specific up", "specific down"],
                rows,
                f"Shared vs population-specific latents ({_TEST_NAMES.get(test, test)} over cases, "
                "Benjamini-Hochberg, effect-size thresholds)",
            )
        ],
        figures=figs,
    )
    if spec_rows:
        sec.tables.append(
            Table(
                ["cohort", "latent", "direction", "q", "effect", "rate", "ref rate", "region"],
                spec_rows,
                "Population-specific latents (top 10 per cohort)",
            )
        )
    for region, per in m["reliance"].items():
        sec.tables.append(
            Table(
                ["cohort", "top latents by attribution"],
                [
                    [c, ", ".join(f"{r['latent']} ({r['attribution']:.2g})" for r in top[:6])]
                    for c, top in per.items()
                ],
                f"Differential reliance: {region} logit",
            )
        )
    for al in m.get("cohort_sae_alignment", []):
        sec.paragraphs.append(
            f"Per-cohort SAEs {al['cohort_a']} vs {al['cohort_b']}: {al['fraction_above']:.1%} of "
            f"{al['n_pairs']} decoder pairs match with cosine >= {al['threshold']}."
        )
    return [sec, Section(f"{mid}: example latent maps", figures=examples)] if examples else [sec]


def write_report_html(
    path: Path,
    report: dict[str, Any],
    loaded: dict,
    cases: dict,
    src: str,
    volcano: dict[str, dict[str, tuple]] | None = None,
) -> Path:
    """Render the report page (see :func:`medseglens_core.analysis.report.build_diff_report`)."""
    sections = [
        Section(
            "Cohorts",
            tables=[Table(["cohort", "cases"], [[c, v["n_cases"]] for c, v in report["cohorts"].items()])],
            paragraphs=[f"Source (reference) cohort: {src}."],
        )
    ]
    for mid, m in report["models"].items():
        sections += _model_sections(mid, m, src, loaded, cases, report["criteria"].get("test", "mwu"))
    if volcano:
        sections.append(_full_volcano(volcano, report["criteria"]["alpha"]))
    for x in report["crossarch"]:
        rows = [
            [
                p["latent_a"],
                p["latent_b"],
                p["corr"],
                p["p"],
                p.get("q", p["p"]),
                p["region_a"],
                p["region_b"],
            ]
            for p in x["pairs"][:30]
        ]
        sections.append(
            Section(
                f"Cross-architecture: {x['model_a']} vs {x['model_b']}",
                [
                    f"Shared-backbone fraction {x['shared_fraction']:.1%}: {x['n_significant']} of "
                    f"{min(x['n_alive_a'], x['n_alive_b'])} matched pairs with BH q < {x['alpha']} "
                    f"({x['n_alive_a']} and {x['n_alive_b']} live latents; {x['n_slices']} slices; maps "
                    "centred per position inside the brain; p from "
                    f"{x['n_perm']} slice permutations against the best partner either latent finds; "
                    f"null 95th percentile {x['null_max']:.3f})."
                ],
                tables=[
                    Table(
                        ["latent A", "latent B", "corr", "p", "q", "region A", "region B"],
                        rows,
                        "Top matched pairs",
                    )
                ],
            )
        )
    return write_html(
        path,
        "Med-SegLens cross-dataset diff report",
        sections,
        f"Generated {report['created']}; counting by case; Benjamini-Hochberg FDR.",
    )


def _full_volcano(volcano: dict[str, dict[str, tuple]], alpha: float) -> Section:
    figs = []
    for mid, per in volcano.items():
        for c, item in per.items():
            eff, q, spec, ref = item[:4]
            tested = item[4] if len(item) > 4 else np.ones(len(eff), dtype=bool)
            idx = np.flatnonzero(tested)
            figs.append(
                Figure(volcano_png(eff[idx], q[idx], spec[idx], f"{mid}: {c} vs {ref}", alpha, idx.tolist()))
            )
    return Section(
        "Specificity (volcano)",
        ["Every tested latent (pooled firing rate above the filter); red = population-specific."],
        figures=figs,
    )
