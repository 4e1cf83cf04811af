"""The README's result tables, read from a zoo's cards and reports (``medseglens zoo results``).

Nothing is recomputed: every number comes from a file the zoo build (or a later command)
wrote, so the tables of a build are a pure function of that build's artefacts:

* **dice**: model cards' ``test_dice`` (mean Dice per cohort and region on the test split,
  WT HD95 in mm; the healthy row is the mean false-positive WT volume in mL);
* **saes**: SAE cards (``d_in``, ``d_sae``, held-out explained variance, dead fraction, splice
  WT Dice against the original prediction, training tokens, weights sha256);
* **diff**: ``reports/<id>/report.json`` (specific latents per cohort, more / less used than
  in the reference, plus the cross-architecture shared fraction);
* **recovery**: every ``recovery.json`` under ``ZOO/reports`` or ``ZOO/recovery`` and any extra
  file given (one document or ``{"protocols": [...]}``);
* **ood**: the OOD calibration files ``ZOO/ood/<model>.json`` when present (threshold,
  calibration cases, flag rate per cohort);
* **suite**: any leave-one-shift-out ``suite.json`` given (``medseglens recover-suite``): per
  model and shift, each protocol's recovered failures and the best baseline under the blind rule.

:func:`zoo_results` returns the JSON document; :func:`results_markdown` renders it as the
README's Markdown tables.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from medseglens_core.errors import NotFound

SCHEMA_VERSION = 1
REGIONS = (("WT", "WT_dice"), ("TC", "TC_dice"), ("ET", "ET_dice"), ("NCR", "NCR_label_dice"))
REGIONS += (("SNFH", "SNFH_label_dice"), ("WT_hd95", "WT_hd95"))


_ZOO_ARTEFACT = "of the zoo ({exc}); rebuild or restore that artefact"


def _read(path: Path, problem: str = _ZOO_ARTEFACT) -> dict[str, Any]:
    """``path``'s JSON; unreadable or not JSON: NotFound "cannot read NAME " + ``problem``."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise NotFound(f"cannot read {path.name} " + problem.format(exc=exc)) from exc


def _rel(path: Path, zoo: Path) -> str:
    try:
        return str(path.relative_to(zoo))
    except ValueError:
        return path.name


def dice_rows(zoo: Path) -> list[dict[str, Any]]:
    """One row per model and cohort from the model cards' ``test_dice``."""
    rows = []
    for card_path in sorted(zoo.glob("models/*/card.json")):
        card = _read(card_path)
        for cohort, scores in sorted(card.get("test_dice", {}).items()):
            row: dict[str, Any] = {
                "model_id": card.get("id", card_path.parent.name),
                "arch": card.get("architecture"),
                "cohort": cohort,
                "n_cases": scores.get("n_cases"),
            }
            if "false_positive_WT_ml" in scores:
                row["false_positive_WT_ml"] = scores["false_positive_WT_ml"]
            else:
                row.update({name: scores.get(key) for name, key in REGIONS})
            rows.append(row)
    return rows


def sae_rows(zoo: Path) -> list[dict[str, Any]]:
    """One row per SAE card."""
    rows = []
    for card_path in sorted(zoo.glob("saes/*/card.json")):
        card = _read(card_path)
        m = card.get("metrics", {})
        rows.append(
            {
                "sae_id": card.get("id", card_path.parent.name),
                "model_id": card.get("model_id"),
                "hook": card.get("hook"),
                "role": card.get("role", "steering"),
                "d_in": card.get("d_in"),
                "d_sae": card.get("d_sae"),
                "explained_variance": m.get("explained_variance"),
                "dead_fraction": m.get("dead_fraction"),
                "splice_WT_dice": m.get("fidelity", {}).get("splice_vs_original", {}).get("WT"),
                "eval_on": m.get("eval_on"),
                "train_tokens": m.get("train_tokens"),
                "weights_sha256": card.get("weights_sha256"),
            }
        )
    return rows


def diff_rows(zoo: Path) -> list[dict[str, Any]]:
    """Per report and model: specific latents (up / down) per cohort, and cross-architecture facts."""
    rows = []
    for path in sorted(zoo.glob("reports/*/report.json")):
        report = _read(path)
        source = report.get("source_cohort")
        for model_id, m in sorted(report.get("models", {}).items()):
            counts = {
                cohort: {
                    "up": c.get("specific_up"),
                    "down": c.get("specific_down"),
                    "reference": c.get("reference"),
                }
                for cohort, c in sorted(m.get("counts", {}).items())
            }
            rows.append(
                {
                    "report": path.parent.name,
                    "model_id": model_id,
                    "sae_id": m.get("sae_id"),
                    "hook": m.get("hook"),
                    "source_cohort": source,
                    "specific": counts,
                    "ood": m.get("ood"),
                }
            )
    return rows


def crossarch_rows(zoo: Path) -> list[dict[str, Any]]:
    """Cross-architecture alignment summaries of every report."""
    keys = ("model_a", "model_b", "pairs", "n_significant", "shared_fraction", "null_max")
    rows = []
    for path in sorted(zoo.glob("reports/*/report.json")):
        for entry in _read(path).get("crossarch", []) or []:
            row = {"report": path.parent.name, **{k: entry.get(k) for k in keys}}
            if isinstance(row["pairs"], list):  # the report lists the matched pairs themselves
                row["pairs"] = len(row["pairs"])
            rows.append(row)
    return rows


def _recovery_docs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return list(doc["protocols"]) if isinstance(doc.get("protocols"), list) else [doc]


def recovery_rows(zoo: Path, extra: Iterable[str | Path] = ()) -> list[dict[str, Any]]:
    """One row per recovery protocol document found in the zoo or given."""
    found = sorted({*zoo.glob("reports/**/recovery.json"), *zoo.glob("recovery/**/recovery.json")})
    paths = [(p, _rel(p, zoo)) for p in found] + [(Path(p), Path(p).name) for p in extra]
    keys = ("model_id", "sae_id", "protocol", "source", "target", "n_cases", "n_failures")
    keys += ("recovered_fraction", "dice_before", "dice_after", "source_dice_change")
    rows = []
    for path, name in paths:
        if not Path(path).is_file():
            raise NotFound(f"no recovery file {name}; pass a recovery.json written by medseglens recover")
        for doc in _recovery_docs(_read(Path(path))):
            verdict, se = doc.get("verdict") or {}, doc.get("side_effects") or {}
            rows.append(
                {
                    "file": name,
                    **{k: doc.get(k) for k in keys},
                    "best_baseline": verdict.get("best_baseline"),
                    "best_baseline_recovered_fraction": verdict.get("best_baseline_recovered_fraction"),
                    "beats_best_baseline": verdict.get("beats_best_baseline"),
                    "TC_change": se.get("TC"),
                    "ET_change": se.get("ET"),
                }
            )
    return rows


def _tc_et(r: dict[str, Any]) -> str:
    if r.get("TC_change") is None:
        return "-"
    return f"{r['TC_change']:+.3f} / {r['ET_change']:+.3f}"


def _baseline_cell(r: dict[str, Any]) -> str:
    if not r.get("best_baseline"):
        return "-"
    mark = " (latent beats it)" if r.get("beats_best_baseline") else ""
    return f"{r['best_baseline']} {_pct(r['best_baseline_recovered_fraction'])}{mark}"


def suite_rows(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """One row per (suite file, model, shift) of the given ``suite.json`` files: each protocol's
    numbers and the best non-latent baseline under the blind rule (the suite's own ``summary``
    names it)."""
    rows = []
    for path in map(Path, paths):
        if not path.is_file():
            raise NotFound(
                f"no suite file {path.name}; pass a suite.json written by medseglens recover-suite"
            )
        doc = _read(path, "({exc}); pass a suite.json written by medseglens recover-suite")
        try:
            rows += _suite_file_rows(path, doc)
        except (KeyError, TypeError, AttributeError):
            raise NotFound(f"{path.name} is not a suite.json of medseglens recover-suite") from None
    return rows


def _suite_file_rows(path: Path, doc: dict[str, Any]) -> list[dict[str, Any]]:
    cfg, rows = doc.get("config") or {}, []
    for model_id, summary in doc["summary"].items():
        for shift, best in summary["per_shift"].items():
            mine = [r for r in doc["rows"] if r["model_id"] == model_id and r["shift"] == shift]
            base = [r for r in mine if r["protocol"] == best.get("best_baseline")]
            rows.append(
                {
                    "file": str(path),
                    "seed": cfg.get("seed"),
                    "n_target": cfg.get("n_target"),
                    "model_id": model_id,
                    "shift": shift,
                    "design_shift": shift in (doc.get("design_shifts") or {}),
                    "protocols": {r["protocol"]: _suite_numbers(r) for r in mine if r["kind"] == "latent"},
                    "best_baseline": {"name": best["best_baseline"], **_suite_numbers(base[0])}
                    if base
                    else None,
                    "latent_beats_baseline": best.get("latent_beats_baseline"),
                }
            )
    return rows


def _suite_numbers(r: dict[str, Any]) -> dict[str, Any]:
    from medseglens_core.interventions.suite import row_numbers

    side = r.get("side_effects") or {}
    return row_numbers(r) | {"TC_change": side.get("TC"), "ET_change": side.get("ET")}


def ood_rows(zoo: Path) -> list[dict[str, Any]]:
    """OOD calibration summaries (``ZOO/ood/<model>.json``)."""
    rows = []
    for path in sorted(zoo.glob("ood/*.json")):
        doc = _read(path)
        rows.append(
            {
                "model_id": doc.get("model_id", path.stem),
                "sae_id": doc.get("sae_id"),
                "calibrated": doc.get("calibrated"),
                "threshold": doc.get("threshold"),
                "n_calibration": doc.get("n_calibration"),
                "flag_rate": doc.get("flag_rate", {}),
            }
        )
    return rows


def zoo_results(
    zoo: str | Path, recovery: Sequence[str | Path] = (), suite: Sequence[str | Path] = ()
) -> dict[str, Any]:
    """Every result table of a zoo as one JSON document (see the module doc for the sources)."""
    z = Path(zoo)
    if not z.is_dir() or not any(z.glob("models/*/card.json")):
        raise NotFound(f"no zoo with model cards at {z.name or z}; run medseglens zoo build --out DIR first")
    summary = _read(z / "zoo.json") if (z / "zoo.json").is_file() else {}
    from medseglens_core.zoo import config_sha256

    cfg = summary.get("config")
    return {
        "schema_version": SCHEMA_VERSION,
        "zoo": {
            "package_version": summary.get("package_version"),
            "source_commit": summary.get("source_commit"),
            "config_sha256": summary.get("config_sha256") or (config_sha256(cfg) if cfg else None),
            "timings_s": summary.get("timings_s"),
        },
        "dice": dice_rows(z),
        "saes": sae_rows(z),
        "diff": diff_rows(z),
        "crossarch": crossarch_rows(z),
        "recovery": recovery_rows(z, recovery),
        "ood": ood_rows(z),
        "suite": suite_rows(suite),
    }


def _f(value: Any, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:.{digits}f}"


def _pct(value: Any, digits: int = 0) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def results_markdown(doc: dict[str, Any]) -> str:
    """The result tables of :func:`zoo_results` as Markdown (what the README pastes)."""
    z = doc["zoo"]
    out = [
        f"Zoo: package {z.get('package_version') or '-'}, commit {z.get('source_commit') or 'unknown'}, "
        f"config sha256 {(z.get('config_sha256') or '-')[:12]}; build timings (s) "
        + (", ".join(f"{k} {v}" for k, v in (z.get("timings_s") or {}).items()) or "-"),
        "",
        "### Dice per cohort (test split)",
        "",
    ]
    rows = []
    for r in doc["dice"]:
        if "false_positive_WT_ml" in r:
            fp = f"false-positive tumour {r['false_positive_WT_ml']:.2f} mL per scan"
            rows.append([r["model_id"], r["cohort"], fp, "", "", "", "", "", str(r["n_cases"])])
        else:
            cells = [_f(r.get(name)) for name, _ in REGIONS[:-1]] + [_f(r.get("WT_hd95"), 1)]
            rows.append([r["model_id"], r["cohort"], *cells, str(r["n_cases"])])
    out += _table(["model", "cohort", "WT", "TC", "ET", "NCR", "SNFH (oedema)", "WT HD95", "cases"], rows)
    out += ["", "### SAEs (held-out tokens)", ""]
    rows = [
        [
            r["sae_id"] + (f" ({r['role']})" if r["role"] != "steering" else ""),
            f"{r['d_in']} -> {r['d_sae']}",
            _f(r["explained_variance"], 3),
            _pct(r["dead_fraction"], 1),
            _f(r["splice_WT_dice"], 3),
            f"{r['train_tokens']:,}" if r["train_tokens"] else "-",
            (r["weights_sha256"] or "-")[:12],
        ]
        for r in doc["saes"]
    ]
    out += _table(
        ["SAE", "d_in -> d_sae", "explained variance", "dead", "splice WT Dice", "tokens", "sha256"], rows
    )
    out += _diff_markdown(doc)
    out += ["", "### Failure recovery", ""]
    if doc["recovery"]:
        rows = [
            [
                str(r["model_id"]),
                str(r["protocol"]),
                str(r["target"]),
                str(Path(str(r["file"])).parent.name or "-"),
                f"{r['n_failures']} of {r['n_cases']}",
                _pct(r["recovered_fraction"]),
                f"{_f(r['dice_before'])} -> {_f(r['dice_after'])}",
                _f(r["source_dice_change"], 3),
                _tc_et(r),
                _baseline_cell(r),
            ]
            for r in doc["recovery"]
        ]
        out += _table(
            ["model", "protocol", "target", "run", "failures", "recovered", "before -> after", "source change",
             "TC / ET change", "best non-latent baseline"],
            rows,
        )  # fmt: skip
    else:
        out.append("No recovery results in this zoo (run `medseglens recover ... --out ZOO/recovery/NAME`).")
    if doc["ood"]:
        out += ["", "### Out-of-distribution flag (calibrated on the validation cases)", ""]
        cohorts = sorted({c for r in doc["ood"] for c in r["flag_rate"]})
        rows = [
            [r["model_id"], _f(r["threshold"], 3), str(r["n_calibration"])]
            + [_ood_rate(r["flag_rate"].get(c)) for c in cohorts]
            for r in doc["ood"]
        ]
        out += _table(["model", "threshold", "calibration cases", *[f"flagged: {c}" for c in cohorts]], rows)
    out += _suite_markdown(doc.get("suite") or [])
    return "\n".join(out) + "\n"


def _suite_cell(p: dict[str, Any] | None) -> str:
    """``recovered / failures (before -> after)``; ``not run`` / ``-`` where there is nothing."""
    if p is None:
        return "not run"
    n = p.get("n_failures") or 0
    if not n:
        return "-"
    rec = round((p.get("recovered_fraction") or 0.0) * n)
    return f"{rec}/{n} ({_f(p.get('dice_before'))} -> {_f(p.get('dice_after'))})"


def _suite_markdown(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    out = ["", "### Leave-one-shift-out suite (`*`: the shift informed a design choice)", ""]
    table: list[list[str]] = []
    quiet: dict[tuple[str, str], list[str]] = {}
    for r in rows:
        n = max((p.get("n_failures") or 0 for p in r["protocols"].values()), default=0)
        if not n:
            quiet.setdefault((Path(r["file"]).parent.name, r["model_id"]), []).append(r["shift"])
            continue
        blind, b = r["protocols"].get("blind"), r["best_baseline"]
        table.append(
            [
                f"{Path(r['file']).parent.name or '-'} (seed {r['seed']})",
                r["model_id"],
                r["shift"] + (" *" if r["design_shift"] else ""),
                str(n),
                *[_suite_cell(r["protocols"].get(p)) for p in ("oracle", "blind", "diff")],
                f"{b['name'].split(' (')[0]} {_suite_cell(b)}" if b else "-",
                _tc_et(blind) if blind else "-",
            ]
        )
    header = ["suite", "model", "shift", "failures", "oracle", "blind", "diff", "best baseline (blind rule)"]
    out += _table([*header, "blind TC / ET change"], table)
    out += [""] + [
        f"- {suite} {model}: no evaluated case fails (SNFH >= 0.5) under {', '.join(shifts)}"
        for (suite, model), shifts in quiet.items()
    ]
    return out


def _ood_rate(rate: dict[str, Any] | None) -> str:
    if not rate:
        return "-"
    return f"{rate['flagged']} / {rate['n']}"


def _diff_markdown(doc: dict[str, Any]) -> list[str]:
    out = ["", "### Diff report: cohort-specific latents (more / less used than the reference)", ""]
    by_report: dict[str, list[dict[str, Any]]] = {}
    for r in doc["diff"]:
        by_report.setdefault(r["report"], []).append(r)
    for report, rows in sorted(by_report.items()):
        source = rows[0]["source_cohort"]
        cohorts = sorted({c for r in rows for c in r["specific"] if c != source})
        header = ["model", *cohorts] + ([f"{source} vs the rest"] if source else [])
        cells = []
        for r in rows:
            s = r["specific"]
            cols = [*cohorts, *([source] if source else [])]
            cells.append(
                [f"{r['model_id']} ({r['hook']})"]
                + [f"{s[c]['up']} / {s[c]['down']}" if c in s else "-" for c in cols]
            )
        if len(by_report) > 1:
            out.append(f"Report `{report}`:")
            out.append("")
        out += _table(header, cells)
    for r in doc["crossarch"]:
        out += [
            "",
            f"Cross-architecture ({r['model_a']} vs {r['model_b']}): {_pct(r['shared_fraction'])} of the "
            f"{r['pairs']} most active latent pairs match above the permutation null "
            f"({r['n_significant']} pairs).",
        ]
    return out
