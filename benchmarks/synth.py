"""Benchmark: seconds per synthetic case at 2 mm and 1 mm (generate + write the five NIfTI files).

Prints JSON::

    {"seconds_per_case_2mm": s, "seconds_per_case_1mm": s,      # median wall time, generate + write
     "targets": {"seconds_per_case_2mm": 1.0, "seconds_per_case_1mm": 5.0}, "meets_targets": {...},
     "detail": {"2mm": {"generate_s", "write_s", "cpu_s", "template_load_s", "cases"}, "1mm": ...},
     "load_average": [...], "cpu_count": n}

Cases cycle through the four presets (adult, pediatric, ssa, healthy), so the median covers the
slowest cohort (ssa: largest lesions plus thick-slice resampling). The one-off template load (once
per process, cached) is reported apart. ``cpu_s`` is process CPU time per case: on a busy shared
machine (see ``load_average``) it is the steadier number.

``--calibrate`` adds a quick proxy for "an adult-trained model on ssa": a gradient-boosted voxel
classifier on z-scored intensities and local means, trained on adult cases and scored (Dice per
region) on held-out adult, ssa and pediatric cases. Minutes, not seconds.

Usage: ``python benchmarks/synth.py [--cases 4] [--cases-1mm 2] [--calibrate]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from medseglens_core.data.synthetic import (  # noqa: E402
    COHORTS,
    case_id_for,
    case_seed,
    generate_case,
    load_templates,
    write_case,
)

TARGETS = {"seconds_per_case_2mm": 1.0, "seconds_per_case_1mm": 5.0}
ORDER = ("adult", "pediatric", "ssa", "healthy")


def time_resolution(resolution: int, n_cases: int, tmp: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    load_templates(resolution)
    load_s = time.perf_counter() - t0
    gen, wr, cpu, total = [], [], [], []
    for i in range(n_cases):
        cohort = ORDER[i % len(ORDER)]
        c0, t0 = time.process_time(), time.perf_counter()
        case = generate_case(
            COHORTS[cohort], case_seed(0, i, cohort), resolution, case_id=case_id_for(cohort, 0, i)
        )
        t1 = time.perf_counter()
        write_case(case, tmp / f"{resolution}mm")
        t2 = time.perf_counter()
        gen.append(t1 - t0)
        wr.append(t2 - t1)
        total.append(t2 - t0)
        cpu.append(time.process_time() - c0)
    return {
        "seconds_per_case": round(statistics.median(total), 3),
        "generate_s": round(statistics.median(gen), 3),
        "write_s": round(statistics.median(wr), 3),
        "cpu_s": round(statistics.median(cpu), 3),
        "max_s": round(max(total), 3),
        "template_load_s": round(load_s, 3),
        "cases": n_cases,
    }


def _features(case) -> tuple[np.ndarray, np.ndarray]:
    from scipy import ndimage as ndi

    x = case.stacked()
    brain = x[0] > 0
    feats = []
    for m in range(4):
        v = x[m]
        z = np.where(brain, (v - v[brain].mean()) / v[brain].std(), 0).astype(np.float32)
        feats += [z, ndi.uniform_filter(z, 3), ndi.uniform_filter(z, 7)]
    return np.stack(feats, -1)[brain], case.label[brain]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * (a & b).sum() / s)


def calibrate(n_train: int = 6, n_test: int = 8) -> dict[str, Any]:
    """Proxy check of the cohort shift: adult-trained voxel classifier, Dice per cohort (2 mm)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    xs, ys = [], []
    for i in range(n_train):
        f, lab = _features(generate_case(COHORTS["adult"], case_seed(0, i, "adult"), 2))
        keep = (np.random.default_rng(i).random(len(lab)) < 0.15) | (lab > 0)
        xs.append(f[keep])
        ys.append(lab[keep])
    clf = HistGradientBoostingClassifier(max_iter=60, random_state=0).fit(
        np.concatenate(xs), np.concatenate(ys)
    )
    out: dict[str, Any] = {}
    for cohort in ("adult", "ssa", "pediatric"):
        rows = []
        for i in range(n_test):
            f, lab = _features(generate_case(COHORTS[cohort], case_seed(1, 100 + i, cohort), 2))
            pred = clf.predict(f)
            rows.append(
                (
                    _dice(pred > 0, lab > 0),
                    _dice(pred == 2, lab == 2),
                    _dice(np.isin(pred, (1, 3)), np.isin(lab, (1, 3))),
                )
            )
        r = np.array(rows)
        out[cohort] = {
            "dice_WT": round(float(r[:, 0].mean()), 3),
            "dice_SNFH": round(float(r[:, 1].mean()), 3),
            "dice_TC": round(float(r[:, 2].mean()), 3),
            "snfh_dice_per_case": [round(float(v), 3) for v in r[:, 1]],
            "fraction_snfh_dice_below_0.5": round(float((r[:, 1] < 0.5).mean()), 3),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=4, help="cases timed at 2 mm")
    ap.add_argument("--cases-1mm", type=int, default=2, help="cases timed at 1 mm")
    ap.add_argument("--calibrate", action="store_true", help="also run the adult->ssa proxy check (minutes)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d2 = time_resolution(2, args.cases, Path(tmp))
        d1 = time_resolution(1, args.cases_1mm, Path(tmp))
    result: dict[str, Any] = {
        "seconds_per_case_2mm": d2["seconds_per_case"],
        "seconds_per_case_1mm": d1["seconds_per_case"],
        "targets": TARGETS,
        "meets_targets": {
            "seconds_per_case_2mm": d2["seconds_per_case"] <= TARGETS["seconds_per_case_2mm"],
            "seconds_per_case_1mm": d1["seconds_per_case"] <= TARGETS["seconds_per_case_1mm"],
        },
        "detail": {"2mm": d2, "1mm": d1},
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "cpu_count": os.cpu_count(),
    }
    if args.calibrate:
        result["calibration_proxy"] = calibrate()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
