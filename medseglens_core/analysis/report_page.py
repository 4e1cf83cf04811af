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


def _model_sections(mid: str, m: dict[str, Any], src: str, loaded: dict, cases: dict) -> list[Section]:
    cohorts = list(m["firing_rate"])
    rates = np.array([m["firing_rate"][c] for c in cohorts])
    alive = np.flatnonzero(rates.max(axis=0) >= 1e-3)
    order = alive[np.argsort(-rates[:, alive].std(axis=0))][:80]
    figs = [
        Figure(
            heatmap_png(
                rates[:, order],
                cohorts,
                [str(j) for j in order],
                f"{mid}: firing rate per cohort (80 most variable live latents)",
            )
        )
    ]
    rows = []
    for c, cnt in m["counts"].items():
        rows.append([c, str(cnt["reference"]), cnt["shared"], cnt["specific_up"], cnt["specific_down"]])
    spec_rows = []
    model, sae, hook, size = loaded[mid]
    examples = []
    for c, diffs in m["specific"].items():
        if c == src:
            continue
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
        ups = [d for d in diffs if d["direction"] == "up"][:1]
        for d in ups:
            case = cases[c][0]
            bg, ov, z = latent_slice(model, sae, hook, size, case, d["latent"])
            examples.append(
                Figure(
                    overlay_png(bg, ov, f"{mid} latent {d['latent']} ({c}, z={z})"),
                    f"latent {d['latent']} on {case.case_id}, axial z={z} (T2-FLAIR)",
                )
            )
    sec = Section(
        f"Model {mid} ({m['arch']}, SAE {m['sae_id']}, hook {m['hook']}, {m['n_alive']}/{m['d_sae']} live latents)",
        tables=[
            Table(
                ["cohort", "reference", "shared", "specific up", "specific down"],
                rows,
                "Shared vs population-specific latents (case-level Mann-Whitney, BH, effect threshold)",
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
        sections += _model_sections(mid, m, src, loaded, cases)
    if volcano:
        sections.append(_full_volcano(volcano, report["criteria"]["alpha"]))
    for x in report["crossarch"]:
        rows = [
            [p["latent_a"], p["latent_b"], p["corr"], p["p"], p["region_a"], p["region_b"]]
            for p in x["pairs"][:30]
        ]
        sections.append(
            Section(
                f"Cross-architecture: {x['model_a']} vs {x['model_b']}",
                [
                    f"Shared-backbone fraction {x['shared_fraction']:.1%} ({x['n_significant']} pairs with max-statistic "
                    f"p < {x['alpha']} over {x['n_perm']} slice permutations; {x['n_slices']} slices; null 95th percentile "
                    f"of the best matched correlation {x['null_max']:.3f})."
                ],
                tables=[
                    Table(
                        ["latent A", "latent B", "corr", "p", "region A", "region B"],
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
        for c, (eff, q, spec, ref) in per.items():
            figs.append(
                Figure(volcano_png(eff, q, spec, f"{mid}: {c} vs {ref}", alpha, list(range(len(eff)))))
            )
    return Section("Specificity (volcano)", ["Every latent; red = population-specific."], figures=figs)
