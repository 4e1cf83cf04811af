"""Benchmark: the out-of-distribution flag's error rates and its cost, on a built zoo.

Prints JSON. For every model of ``--zoo`` with the SAE the service uses for it by default:

* the calibration the service would use (``analysis.ood.calibrate_from_zoo``: reference = the
  SAE's training cases, thresholds from ``ZOO/data/train`` held-out cases + ``ZOO/data/val``);
* ``false_positive_rate``: flagged fraction of ``ZOO/data/test`` cases per cohort (in
  distribution, never used for calibration), and over all of them (target <= 0.05);
* ``detection``: flagged fraction of non-BraTS or shifted inputs: nilearn's MNI152 T1 given as
  all four modalities, pure Gaussian-noise volumes (``--noise`` of them), and every kind of the
  shift library (``medseglens_core.data.shifts``) applied to the adult test cases;
* ``overhead``: seconds of the OOD block as the service computes it (the latent firing rates come
  with the top-latent summary; input statistics and assessment) over seconds of a
  segmentation with top latents (``analysis.latents.analyse_case``), medians over
  ``--repeats`` (target <= 0.05).

Usage: ``python benchmarks/ood.py --zoo ZOO [--noise 3] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

MODALITIES = ("t1n", "t1c", "t2w", "t2f")


def _write_case(folder: Path, case_id: str, images: dict[str, np.ndarray], affine: np.ndarray) -> Path:
    import nibabel as nib

    folder.mkdir(parents=True, exist_ok=True)
    for m in MODALITIES:
        nib.save(nib.Nifti1Image(images[m].astype(np.float32), affine), folder / f"{case_id}-{m}.nii.gz")
    return folder


def _probe_cases(tmp: Path, n_noise: int) -> dict[str, list[Path]]:
    """Non-BraTS inputs: MNI152 T1 as four modalities, Gaussian noise on the MNI grid."""
    from nilearn.datasets import load_mni152_template

    mni = load_mni152_template(resolution=2)
    t1 = np.asarray(mni.get_fdata(), dtype=np.float32)
    out = {"mni152_t1_x4": [_write_case(tmp / "mni", "mni", {m: t1 for m in MODALITIES}, mni.affine)]}
    noise = []
    for i in range(n_noise):
        rng = np.random.default_rng(1000 + i)
        imgs = {m: np.abs(rng.normal(100.0, 30.0, t1.shape)) for m in MODALITIES}
        noise.append(_write_case(tmp / f"noise{i}", f"noise{i}", imgs, mni.affine))
    out["noise"] = noise
    return out


def _shift_cases(tmp: Path, adult_test: Path) -> dict[str, list[Path]]:
    """Every kind of the shift library applied (severity 1, seed 0) to the adult test cases."""
    from medseglens_core.data.shifts import SHIFTS, shift_folder

    out = {}
    for kind in SHIFTS:
        dst = tmp / f"shift-{kind}"
        shift_folder(kind, adult_test, dst, seed=0)
        out[f"shift:{kind}"] = sorted(p for p in dst.iterdir() if p.is_dir())
    return out


def _sae_for(zoo: Path, model_id: str) -> tuple[Any, dict[str, Any], str]:
    """The model's main SAE: the one a segmentation without ``sae_id`` uses (CLI and HTTP alike)."""
    from medseglens_core.analysis.zoo import discover_zoo
    from medseglens_core.interventions.zoo import load_sae_for

    entry = {e.model_id: e for e in discover_zoo(zoo)}[model_id]
    sae, card = load_sae_for(zoo, model_id, entry.sae_id)
    return sae, card, entry.sae_id


def bench_model(zoo: Path, model_id: str, probes: dict[str, list[Path]], repeats: int) -> dict[str, Any]:
    from medseglens_core.analysis.encode import resolve_hook
    from medseglens_core.analysis.latents import analyse_case
    from medseglens_core.analysis.ood import (
        assess,
        calibrate_from_zoo,
        input_stats,
        profile_case_dir,
    )
    from medseglens_core.data.preprocess import prepare_case
    from medseglens_core.interventions.zoo import load_model_dir
    from medseglens_core.io import find_cases, load_case

    model, _ = load_model_dir(zoo, model_id)
    model.eval()
    sae, sae_card, sae_id = _sae_for(zoo, model_id)
    hook = resolve_hook(model, None, sae_card)
    cohorts = [str(c) for c in (sae_card or {}).get("cohorts") or []] or sorted(
        p.name for p in (zoo / "data" / "train").iterdir() if p.is_dir()
    )
    t0 = time.perf_counter()
    cal = calibrate_from_zoo(zoo, model, sae, hook, cohorts)
    calib_s = time.perf_counter() - t0

    def flagged(case_dir: Path, cohort: str | None) -> dict[str, Any]:
        block = assess(cal, profile_case_dir(model, sae, hook, case_dir, cohort))
        return {"case": case_dir.name, "flagged": block["flagged"], "score": block["score"]}

    fpr: dict[str, Any] = {}
    all_flags = []
    for cdir in sorted(p for p in (zoo / "data" / "test").iterdir() if p.is_dir()):
        rows = [flagged(p, cdir.name) for p in find_cases(cdir)]
        all_flags += [r["flagged"] for r in rows]
        fpr[cdir.name] = {"n": len(rows), "flagged": sum(r["flagged"] for r in rows)}
    detection = {}
    for name, dirs in probes.items():
        rows = [flagged(p, None) for p in dirs]
        detection[name] = {
            "n": len(rows),
            "flagged": sum(r["flagged"] for r in rows),
            "rate": sum(r["flagged"] for r in rows) / max(len(rows), 1),
        }

    # Cost as in the service: the top-latent summary already holds the latent firing rates.
    case = load_case(find_cases(zoo / "data" / "test" / "adult")[0], cohort="adult")
    size = model.cfg.input_size
    prepared = prepare_case(case, size)
    _, summary = analyse_case(model, sae, case, hook=hook, input_size=size)

    def ood_once() -> None:
        from medseglens_core.analysis.ood import CaseProfile

        assess(cal, CaseProfile(summary.firing_rate, input_stats(prepared, case.geometry.spacing)))

    seg, ood = [], []
    analyse_case(model, sae, case, hook=hook, input_size=size)
    ood_once()
    for _ in range(repeats):
        t = time.perf_counter()
        analyse_case(model, sae, case, hook=hook, input_size=size)
        seg.append(time.perf_counter() - t)
        t = time.perf_counter()
        ood_once()
        ood.append(time.perf_counter() - t)
    return {
        "sae_id": sae_id,
        "calibrated": cal.get("calibrated"),
        "n_calibration": cal.get("n_calibration"),
        "thresholds": cal.get("thresholds"),
        "calibration_s": round(calib_s, 2),
        "false_positive_rate": {
            "per_cohort": fpr,
            "overall": sum(all_flags) / max(len(all_flags), 1),
            "n": len(all_flags),
        },
        "detection": detection,
        "overhead": {
            "segment_with_top_latents_s": statistics.median(seg),
            "ood_s": statistics.median(ood),
            "ratio": statistics.median(ood) / statistics.median(seg),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=Path, required=True)
    ap.add_argument("--noise", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    from medseglens_core.analysis.zoo import discover_zoo

    with tempfile.TemporaryDirectory() as tmp:
        probes = _probe_cases(Path(tmp), args.noise)
        probes.update(_shift_cases(Path(tmp), args.zoo / "data" / "test" / "adult"))
        ids = sorted({e.model_id for e in discover_zoo(args.zoo)})
        out = {mid: bench_model(args.zoo, mid, probes, args.repeats) for mid in ids}
    fp_ok = all(m["false_positive_rate"]["overall"] <= 0.05 for m in out.values())
    det_ok = all(
        m["detection"]["mni152_t1_x4"]["rate"] == 1.0 and m["detection"]["noise"]["rate"] == 1.0
        for m in out.values()
    )
    cost_ok = all(m["overhead"]["ratio"] <= 0.05 for m in out.values())
    print(json.dumps({"models": out, "meets_targets": fp_ok and det_ok and cost_ok}, indent=2))


if __name__ == "__main__":
    main()
