"""``recovery.html``: a self-contained page with the paper-style recovery table and per-case rows."""

from __future__ import annotations

import html
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:70em;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:.3em .6em;text-align:right}
th{background:#eee}td.l,th.l{text-align:left}tr.rec td{background:#e6f4e6}tr.fail td{background:#fbeaea}
code{font-size:.85em}
"""


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}"


def _summary_rows(docs: list[dict[str, Any]]) -> str:
    rows = []
    for d in docs:
        rec = "n/a" if d["recovered_fraction"] is None else f"{d['n_recovered']}/{d['n_failures']}"
        rows.append(
            "<tr>"
            f"<td class=l>{html.escape(d['protocol'])}</td><td class=l>{html.escape(d['model_id'])}</td>"
            f"<td class=l>{html.escape(d['source'])} &rarr; {html.escape(d['target'])}</td>"
            f"<td>{d['n_cases']}</td><td>{d['n_failures']}</td><td>{rec} ({_pct(d['recovered_fraction'])}%)</td>"
            f"<td>{_pct(d['dice_before'])}</td><td>{_pct(d['dice_after'])}</td>"
            f"<td>{100 * d['source_dice_change']:+.2f}</td></tr>"
        )
    return "".join(rows)


def _spec_text(spec: dict[str, Any] | None) -> str:
    if not spec or not spec.get("edits"):
        return "&mdash;"
    parts = []
    for e in spec["edits"]:
        what = e["op"] + (f" {e['value']:.3g}" if e.get("value") is not None else "")
        what += f" &rarr; {html.escape(e['reference_cohort'])}" if e.get("reference_cohort") else ""
        where = e["scope"] + (f" {e['region']}+{e['dilation']}" if e["scope"] == "predicted_region" else "")
        parts.append(f"#{e['latent']} {what} [{where}]")
    kept = spec.get("protect") or []
    return (
        "<code>"
        + "; ".join(parts)
        + "</code>"
        + (f" (unedited labels kept in {', '.join(kept)})" if kept else "")
    )


def _side(se: dict[str, Any] | None) -> str:
    se = se or {}
    cells = [f"{100 * se[k]:+.1f}" if se.get(k) is not None else "n/a" for k in ("TC", "ET", "WT")]
    cells.append(
        f"{se['SNFH_ml']:+.1f} / {se['SNFH_ml_error']:+.1f}" if se.get("SNFH_ml") is not None else "n/a"
    )
    return "".join(f"<td>{c}</td>" for c in cells)


def _baseline_table(d: dict[str, Any]) -> str:
    """The protocol next to its non-latent baselines: recovery, Dice, source and side effects."""
    if not d.get("baselines"):
        return ""
    rows = [("latent: " + d["protocol"], d, None)] + [
        (n, b, b.get("chosen")) for n, b in d["baselines"].items()
    ]
    out = [
        "<table><tr><th class=l>repair</th><th>recovered</th><th>Dice before</th><th>Dice after</th>"
        "<th>source &Delta;</th><th>TC &Delta;</th><th>ET &Delta;</th><th>WT &Delta;</th>"
        "<th>SNFH mL &Delta; / error &Delta;</th><th class=l>chosen</th></tr>"
    ]
    for name, r, chosen in rows:
        rec = "n/a" if r.get("recovered_fraction") is None else f"{r['n_recovered']}/{r['n_failures']}"
        what = chosen if isinstance(chosen, str) else ("per failure" if chosen else "&mdash;")
        out.append(
            f"<tr><td class=l>{html.escape(name)}</td><td>{rec}</td><td>{_pct(r.get('dice_before'))}</td>"
            f"<td>{_pct(r.get('dice_after'))}</td><td>{100 * (r.get('source_dice_change') or 0.0):+.2f}</td>"
            f"{_side(r.get('side_effects'))}"
            f"<td class=l>{html.escape(what) if isinstance(chosen, str) else what}</td></tr>"
        )
    out.append("</table>")
    verdict = (d.get("verdict") or {}).get("summary")
    if verdict:
        out.append(f"<p><b>Verdict:</b> {html.escape(verdict)}</p>")
    return "".join(out)


def render_recovery_html(docs: list[dict[str, Any]]) -> str:
    """HTML page for one or more ``recovery.json`` documents (one per protocol)."""
    first = docs[0]
    region, thr = html.escape(first["region"]), first["threshold"]
    parts = [
        f"<!doctype html><html><head><meta charset=utf-8><title>Recovery: {region}</title>",
        f"<style>{_STYLE}</style></head><body><h1>Failure recovery by latent steering</h1>",
        f"<p>Failure: target case with {region} Dice &lt; {thr}. Recovered: a failure whose {region} Dice "
        f"reaches &ge; {thr} after the edit. Dice in %, means over failures. Source &Delta;: mean {region} "
        "Dice change (points) on the source cohort under the same spec(s).</p>",
        "<table><tr><th class=l>protocol</th><th class=l>model</th><th class=l>shift</th><th>cases</th>"
        "<th>failures</th><th>recovered</th><th>Dice before</th><th>Dice after</th><th>source &Delta;</th></tr>",
        _summary_rows(docs),
        "</table>",
    ]
    for d in docs:
        parts.append(f"<h2>{html.escape(d['protocol'])}</h2>")
        parts.append(_baseline_table(d))
        if d.get("spec"):
            parts.append(f"<p>Spec applied to every held-out case: {_spec_text(d['spec'])}</p>")
        reason = (d.get("selection") or {}).get("reason")
        if reason:
            parts.append(
                f"<p><b>No spec chosen:</b> {html.escape(reason)}; the held-out cases are unedited.</p>"
            )
        if d.get("calibration"):
            ids = ", ".join(html.escape(c) for c in d["calibration"]["target_case_ids"])
            parts.append(f"<p>Calibration target cases (not evaluated): {ids}</p>")
        parts.append(_gate_text(d.get("gate")))
        parts.append(
            "<table><tr><th class=l>case</th><th>Dice before</th><th>Dice after</th><th class=l>status</th>"
            "<th class=l>spec</th></tr>"
        )
        for r in d["cases"]:
            cls = "rec" if r["recovered"] else ("fail" if r["failure"] else "")
            status = "recovered" if r["recovered"] else ("failure" if r["failure"] else "ok")
            spec = _spec_text(r.get("spec")) if d["protocol"] == "oracle" else ""
            parts.append(
                f"<tr class='{cls}'><td class=l>{html.escape(r['case_id'])}</td><td>{_pct(r['dice_before'])}</td>"
                f"<td>{_pct(r['dice_after'])}</td><td class=l>{status}</td><td class=l>{spec}</td></tr>"
            )
        parts.append("</table>")
        cand = d["candidates"]
        parts.append("<p>Candidate latents (reliance in source &times; activation lost in target): ")
        parts.append(
            ", ".join(f"#{j} ({s:.2f})" for j, s in zip(cand["latents"], cand["score"], strict=True))
        )
        parts.append("</p>")
        parts.append(_diff_latents_text(d.get("diff_latents")))
    parts.append("</body></html>")
    return "".join(parts)


def _gate_text(g: dict[str, Any] | None) -> str:
    """Whether a population gate was kept and where it opens (the spec edits only those scans)."""
    if not g:
        return ""
    loo = (
        f"leave-one-out errors {g['leave_one_out_errors']} of "
        f"{len(g['calibration_target_scores']) + len(g['calibration_source_scores'])} calibration scans "
        f"({g.get('leave_one_out_target_errors', 'n/a')} of them target scans)"
    )
    if not g["fitted"]:
        return f"<p><b>Gate:</b> none kept (margin {g['margin']:.3g}; {loo}); the spec edits every scan.</p>"
    return (
        f"<p><b>Gate:</b> margin {g['margin']:.3g}, {loo}; opens on {g['opens_on_evaluated_target']} of "
        f"{g['n_evaluated_target']} evaluated target scans and {g['opens_on_heldout_source']} of "
        f"{g['n_heldout_source']} held-out source scans.</p>"
    )


def _diff_latents_text(dl: dict[str, Any] | None) -> str:
    """Protocol diff: the report's latents, the calibration diff's ranking and what the spec used."""
    if not dl:
        return ""
    effect = ", ".join(
        f"#{r['latent']} ({r['effect']:.3g}{', in report' if r['in_report'] else ''})"
        for r in dl.get("effect", [])[:10]
    )
    return (
        f"<p>Diff report {html.escape(Path(str(dl['report'])).name)}: {len(dl['latents'])} {html.escape(dl['target'])}-specific "
        f"latents. Calibration diff, first-order effect of restoring the source's code: {effect or 'none'}. "
        f"Edited: {', '.join(f'#{j}' for j in dl.get('used', [])) or 'none'}.</p>"
    )


def write_recovery(docs: list[dict[str, Any]], out_dir: Path) -> None:
    """Write ``recovery.json`` (one document, or ``{"protocols": [...]}`` for several) and
    ``recovery.html`` into ``out_dir``."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    body = docs[0] if len(docs) == 1 else {"protocols": docs}
    (out_dir / "recovery.json").write_text(json.dumps(body, indent=1))
    (out_dir / "recovery.html").write_text(render_recovery_html(docs))


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def recovery_document(
    protocol, model_id, source, target, cfg, rows, ranking, src_change, spec_out,
    calib_t, calib_s, labelled_src, evals, seconds,
) -> dict[str, Any]:  # fmt: skip
    """The ``recovery.json`` document of one protocol run (see ``recovery`` module docs)."""
    fails = [r for r in rows if r["failure"]]
    n_rec = sum(r["recovered"] for r in fails)
    notes = {
        "failure": f"evaluated target case with {cfg.region} Dice < {cfg.threshold} under the unedited model",
        "n_failures": "counted over the evaluated cases only (blind protocols: the held-out cases)",
        "recovered": f"failure whose {cfg.region} Dice under the edit is >= {cfg.threshold}",
        "dice": "fractions 0..1; dice_before/dice_after are means over failures",
        "source_dice_change": (
            "mean over the failure specs of the mean Dice change on all labelled source cases"
            if protocol == "oracle"
            else "mean Dice change on all labelled source cases under the one spec "
            "(source_dice_change_heldout: on the source cases not used for calibration)"
        ),
        "candidates": "ranked from model predictions only: source attribution for the region",
    }
    return {
        "protocol": protocol,
        "model_id": model_id,
        "target": target,
        "source": source,
        "region": cfg.region,
        "threshold": cfg.threshold,
        "n_cases": len(rows),
        "n_failures": len(fails),
        "n_failures_scope": "evaluated cases"
        if protocol == "oracle"
        else "held-out cases (calibration excluded)",
        "n_recovered": n_rec,
        "recovered_fraction": n_rec / len(fails) if fails else None,
        "dice_before": _mean([r["dice_before"] for r in fails]),
        "dice_after": _mean([r["dice_after"] for r in fails]),
        "dice_before_all": _mean([r["dice_before"] for r in rows]),
        "dice_after_all": _mean([r["dice_after"] for r in rows]),
        "source_dice_change": src_change,
        "n_source_cases": len(labelled_src),
        "spec": spec_out,
        "calibration": None
        if protocol == "oracle"
        else {
            "target_case_ids": [i.case_id for i in calib_t],
            "source_case_ids": [i.case_id for i in calib_s],
        },
        "candidates": ranking.to_json(),
        "cases": rows,
        "evaluations": evals,
        "time_s": round(seconds, 2),
        "config": asdict(cfg),
        "definitions": notes,
    }
