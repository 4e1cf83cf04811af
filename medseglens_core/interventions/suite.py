"""Leave-one-shift-out evaluation of the repairs (``medseglens recover-suite``, job ``recovery_suite``).

For every acquisition shift kind (:mod:`medseglens_core.data.shifts`) the suite builds a shifted
cohort from adult cases no model has seen and asks: does a repair, calibrated on THIS shift's
calibration cases only, carry to this shift's held-out cases? Per shift ``k``:

* ``source``: ``n_source`` fresh unshifted adult cases (seed ``seed + 1``) -- the recovery's
  source cohort; the zoo's val/test adult cases serve as harm-check cases as in ``recover``;
* ``target`` ``shift-<k>``: ``n_target`` fresh adult cases (seed ``seed``, the same anatomy for
  every shift) with shift ``k`` applied; the first ``calib_n`` by id are the labelled
  calibration cases, the rest are evaluated;
* ``diff``: ``n_diff`` further fresh adult cases (seed ``seed + 2``) with shift ``k``, labels
  REMOVED, diffed against the zoo's unshifted val/test adult scans (case-level permutation test,
  BH, the diff report's criteria; firing-rate family -- the tumour family needs labels). Its
  ``report.json`` is what protocol ``diff`` reads. No evaluated case enters the diff.

Each (shift, model) runs ``protocols`` (default oracle, blind, diff) through
:func:`~.pipeline.recover_from_zoo`, so every protocol also carries the non-latent baselines
on the same cases and calibration. A shift where the unedited model fails no evaluated case is
reported as such (``n_failures: 0``), not skipped silently.

``DESIGN_SHIFTS`` names the shift kinds that informed a design choice (the others are unseen):
``modality_swap`` is the diff's planted positive control; ``bright_compression`` (suite-9600)
informed the gate's balanced leave-one-out rule.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medseglens_core.errors import InvalidInput

Progress = Callable[[dict[str, Any]], None] | None

#: Shift kinds that informed a design choice, and which.
DESIGN_SHIFTS: dict[str, str] = {
    "modality_swap": "the diff report's planted positive control (its thresholds were checked on it)",
    "bright_compression": "the gate's balanced leave-one-out rule (suite-9600, U-Net: a gate that "
    "missed its left-out calibration targets opened on 1 of 9 evaluated scans)",
}


@dataclass(frozen=True)
class SuiteConfig:
    """Sizes and seeds of the suite (defaults: what README reports)."""

    n_source: int = 4
    n_target: int = 9
    n_diff: int = 6
    calib_n: int = 3
    severity: float = 1.0
    seed: int = 9100
    protocols: tuple[str, ...] = ("oracle", "blind", "diff")


def run_suite(
    zoo: Path,
    out: Path,
    *,
    models: Sequence[str] | None = None,
    kinds: Sequence[str] | None = None,
    config: SuiteConfig = SuiteConfig(),
    progress: Progress = None,
) -> dict[str, Any]:
    """Run the suite (module docs); writes ``out/suite.json`` + ``out/suite.html`` and returns the JSON."""
    from medseglens_core.catalog import Catalog
    from medseglens_core.data.shifts import SHIFTS
    from medseglens_core.interventions.pipeline import parse_protocols
    from medseglens_core.interventions.recovery import RecoveryConfig

    kinds = list(kinds or SHIFTS)
    bad = [k for k in kinds if k not in SHIFTS]
    if bad:
        raise InvalidInput(f"unknown shift kind {bad[0]!r}; choose from: {', '.join(SHIFTS)}")
    protocols = parse_protocols(list(config.protocols))
    if not 1 <= config.calib_n < config.n_target or config.calib_n > 5:
        raise InvalidInput(
            f"calib_n must be 1..5 and below n_target ({config.n_target}); got {config.calib_n}"
        )
    cat = Catalog.read(zoo)
    have = [m.model_id for m in cat.models if cat.main_sae(m.model_id) is not None]
    models = list(models or have)
    missing = [m for m in models if m not in have]
    if missing or not models:
        raise InvalidInput(f"no model {missing[0] if missing else ''!r} with an SAE in the zoo; have {have}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise InvalidInput(f"'{out.name}' exists and is not empty; choose a new output folder")
    data = out / "data"
    base = _fresh_cases(data, config)
    rows: list[dict[str, Any]] = []
    cfg = RecoveryConfig(calib_n=config.calib_n)
    for kind in kinds:
        _emit(progress, stage="shift", kind=kind)
        cohort = f"shift-{kind}"
        root = _shifted_cohort(data, base, kind, cohort, config)
        for model_id in models:
            report = _diff_report(zoo, model_id, root, cohort, progress)
            rows += _recover_rows(zoo, root, model_id, cohort, kind, protocols, cfg, report, out, progress)
    doc = {
        "schema_version": 1,
        "config": asdict(config),
        "models": models,
        "shifts": kinds,
        "design_shifts": {k: v for k, v in DESIGN_SHIFTS.items() if k in kinds},
        "rows": rows,
        "summary": summarise(rows, kinds),
        "definitions": {
            "recovered_fraction": "recovered failures / failures among the shift's evaluated cases",
            "dice": "SNFH Dice, mean over the failures (before -> after)",
            "source_dice_change": "mean SNFH Dice change on the labelled source cases",
            "baseline rows": "non-latent baselines with the protocol's calibration rule "
            "(oracle: per failure; blind: labelled calibration cases)",
        },
    }
    (out / "suite.json").write_text(json.dumps(doc, indent=1))
    (out / "suite.html").write_text(render_suite_html(doc))
    return doc


def _emit(progress: Progress, **info: Any) -> None:
    if progress is not None:
        progress(info)


def _fresh_cases(data: Path, cfg: SuiteConfig) -> dict[str, Path]:
    """Unseen adult cases: ``source``, ``target`` (to be shifted), ``diff`` (to be shifted, unlabelled)."""
    from medseglens_core.data.synthetic import write_cohort

    out = {}
    for name, n, seed in (("source", cfg.n_source, cfg.seed + 1), ("target", cfg.n_target, cfg.seed),
                          ("diff", cfg.n_diff, cfg.seed + 2)):  # fmt: skip
        folder = data / "fresh" / name
        write_cohort(folder, "adult", n, seed=seed)
        out[name] = folder
    return out


def _shifted_cohort(data: Path, base: dict[str, Path], kind: str, cohort: str, cfg: SuiteConfig) -> Path:
    """``data/<kind>/{adult, shift-<kind>, diff/shift-<kind>}``; returns ``data/<kind>``."""
    from medseglens_core.data.shifts import shift_folder

    root = data / kind
    root.mkdir(parents=True)
    shutil.copytree(base["source"], root / "adult")
    shift_folder(kind, base["target"], root / cohort, severity=cfg.severity, seed=cfg.seed)
    shift_folder(kind, base["diff"], root / "diff" / cohort, severity=cfg.severity, seed=cfg.seed + 2)
    for seg in (root / "diff" / cohort).glob("*/*-seg.nii.gz"):
        seg.unlink()  # the diff split is unlabelled
    return root


def _diff_report(zoo: Path, model_id: str, root: Path, cohort: str, progress: Progress) -> Path:
    """A diff report (the report's schema, this model only) of the shift's unlabelled diff split
    vs the zoo's unshifted val/test adult scans; returns its path."""
    from medseglens_core.analysis.diff import DiffCriteria, cohort_case_stats
    from medseglens_core.analysis.encode import resolve_hook
    from medseglens_core.analysis.report import cohort_counts
    from medseglens_core.catalog import Catalog, data_split
    from medseglens_core.interventions.zoo import load_model_dir, load_sae_for
    from medseglens_core.io import find_cases
    from medseglens_core.provenance import provenance

    model, mcard = load_model_dir(zoo, model_id)
    sae, scard = load_sae_for(zoo, model_id)
    hook = resolve_hook(model, scard.get("hook"), mcard)
    ref = [
        p
        for s in ("val", "test")
        if data_split(zoo, "adult", s).is_dir()
        for p in find_cases(data_split(zoo, "adult", s))
    ]
    cases = {"adult": ref, cohort: find_cases(root / "diff" / cohort)}
    stats = cohort_case_stats(model, sae, cases, hook=hook, card=mcard, progress=None)
    counts, specific, _ = cohort_counts(stats, "adult", DiffCriteria())
    entry = Catalog.read(zoo).main_sae(model_id)
    assert entry is not None and entry.path is not None  # checked by run_suite
    section = {
        "sae_id": entry.sae_id,
        "hook": hook,
        "counts": {cohort: counts[cohort]},
        "specific": {cohort: specific[cohort]},
        "provenance": provenance(Path(zoo) / "models" / model_id, entry.path, zoo=zoo),
    }
    path = root / "diff" / f"report-{model_id}.json"
    report = {"schema_version": 1, "source_cohort": "adult", "criteria": asdict(DiffCriteria()),
              "cohorts": {c: {"n_cases": len(v)} for c, v in cases.items()}, "models": {model_id: section}}  # fmt: skip
    path.write_text(json.dumps(report, indent=1))
    _emit(progress, stage="diff", model=model_id, cohort=cohort, specific=counts[cohort]["specific"])
    return path


def _recover_rows(
    zoo, root, model_id, cohort, kind, protocols, cfg, report, out, progress
) -> list[dict[str, Any]]:
    from medseglens_core.interventions.pipeline import recover_from_zoo
    from medseglens_core.interventions.recovery import DIFF_PROTOCOLS
    from medseglens_core.interventions.report import write_recovery

    design = kind in DESIGN_SHIFTS
    try:
        docs = recover_from_zoo(zoo, root, model_id, cohort, protocols, config=cfg, diff_report=report,
                                progress=progress)  # fmt: skip
    except InvalidInput as exc:
        if "no failures" not in str(exc):
            raise
        return [{"shift": kind, "model_id": model_id, "protocol": p, "kind": "latent", "n_failures": 0,
                 "recovered_fraction": None, "note": str(exc), "design_shift": design} for p in protocols]  # fmt: skip
    write_recovery(docs, out / "runs" / kind / model_id)
    rows = []
    for d in docs:
        common = {"shift": kind, "model_id": model_id, "design_shift": design}
        rows.append({**common, "protocol": d["protocol"], "kind": "latent", **row_numbers(d),
                     "side_effects": d.get("side_effects"), "verdict": (d.get("verdict") or {}).get("summary"),
                     "diff_latents": len((d.get("diff_latents") or {}).get("latents", [])) if d["protocol"] in DIFF_PROTOCOLS else None})  # fmt: skip
        if d["protocol"] in ("oracle", "blind"):
            for name, b in (d.get("baselines") or {}).items():
                rows.append({**common, "protocol": f"{name} ({d['protocol']} rule)", "kind": "baseline",
                             **row_numbers(b), "side_effects": b.get("side_effects")})  # fmt: skip
    return rows


def row_numbers(d: dict[str, Any]) -> dict[str, Any]:
    """The numbers a suite row keeps of a recovery (or baseline) document."""
    return {
        k: d.get(k)
        for k in ("n_failures", "recovered_fraction", "dice_before", "dice_after", "source_dice_change")
    }


def summarise(rows: list[dict[str, Any]], kinds: Sequence[str]) -> dict[str, Any]:
    """Per (model, shift): best latent (blind/diff) vs best calibrated baseline; and the count of
    shifts where the latent repair beats the best baseline (ties do not count)."""
    rf = lambda r: -1.0 if r.get("recovered_fraction") is None else float(r["recovered_fraction"])  # noqa: E731
    out: dict[str, Any] = {}
    for model_id in sorted({r["model_id"] for r in rows}):
        per, wins, tested = {}, 0, 0
        for kind in kinds:
            mine = [r for r in rows if r["model_id"] == model_id and r["shift"] == kind]
            latent = [r for r in mine if r["kind"] == "latent" and r["protocol"] in ("blind", "diff")]
            base = [r for r in mine if r["kind"] == "baseline" and "(blind rule)" in r["protocol"]]
            if not latent or not latent[0].get("n_failures"):
                per[kind] = {"n_failures": 0}
                continue
            rank = lambda r: (rf(r), -1.0 if r.get("dice_after") is None else r["dice_after"])  # noqa: E731
            bl, bb = max(latent, key=rank), max(base, key=rank) if base else None
            beats = bb is None or rf(bl) > rf(bb)
            tested += 1
            wins += beats
            per[kind] = {"n_failures": bl["n_failures"], "best_latent": bl["protocol"], "latent": bl["recovered_fraction"],
                         "best_baseline": bb["protocol"] if bb else None,
                         "baseline": bb["recovered_fraction"] if bb else None, "latent_beats_baseline": beats}  # fmt: skip
        out[model_id] = {"per_shift": per, "shifts_with_failures": tested, "latent_beats_baseline_on": wins}
    return out


def _f(v: Any) -> str:
    return "-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)


def render_suite_html(doc: dict[str, Any]) -> str:
    """One self-contained table: protocol and baseline rows per shift and model."""
    from html import escape

    head = ("shift", "model", "protocol", "failures", "recovered", "Dice before", "Dice after", "source change",
            "TC change", "ET change")  # fmt: skip
    body = []
    for r in doc["rows"]:
        se = r.get("side_effects") or {}
        mark = " *" if r.get("design_shift") else ""
        cells = (r["shift"] + mark, r["model_id"], r["protocol"], r.get("n_failures"), r.get("recovered_fraction"),
                 r.get("dice_before"), r.get("dice_after"), r.get("source_dice_change"), se.get("TC"), se.get("ET"))  # fmt: skip
        cls = ' class="b"' if r["kind"] == "baseline" else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{escape(_f(c))}</td>" for c in cells) + "</tr>")
    note = "".join(f"<li>* {escape(k)}: {escape(v)}</li>" for k, v in doc["design_shifts"].items())
    return (
        "<!doctype html><meta charset=utf-8><title>Recovery suite</title><style>body{font:13px sans-serif}"
        "td,th{padding:2px 8px;border-bottom:1px solid #ddd}tr.b td{color:#555}</style>"
        "<h1>Leave-one-shift-out recovery</h1><p>Each protocol and baseline is calibrated on the shift's own "
        f"calibration cases only ({doc['config']['calib_n']} labelled). Shifts marked * informed a design choice:</p>"
        f"<ul>{note or '<li>none</li>'}</ul><table><tr>"
        + "".join(f"<th>{h}</th>" for h in head)
        + "</tr>"
        + "".join(body)
        + "</table>"
    )
