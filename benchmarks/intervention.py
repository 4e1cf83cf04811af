"""Benchmark: intervention cost with a cached prefix, and top-latent extraction overhead.

Prints JSON. For each architecture (U-Net and SegFormer; from ``--zoo`` when given, else
freshly built at ``--input-size`` with a random BatchTopK SAE of 4x width):

* ``intervention_ratio``: seconds of one intervention on a cached prefix (one latent scaled x4
  inside the predicted WT dilated by 3 voxels; encode + splice + suffix of the touched slices +
  mapping to the case grid) / seconds of a full forward of the same volume (``segment_case``
  on the loaded case: preprocessing, every slice through the whole network, back to the
  grid). Target <= 0.5. ``intervention_all_ratio``: the same with scope ``all`` (every slice).
  Without ``--zoo`` the models are untrained (they mark tumour everywhere), so the edit is
  scoped to the case's true WT dilated by 3 voxels instead (a ``mask`` scope).
* ``top_latent_overhead``: seconds of ``analysis.latents.analyse_case`` (segmentation plus the
  top-latent summary -- top-10 by total and by in-tumour activation, every statistic of each --
  in one pass) / seconds of ``segment_case`` on the same case. Target <= 1.15. The two run
  back to back in each repeat (order alternating); the overhead is the median of the per-repeat
  ratios, so that a load change on a shared machine between repeats does not read as overhead
  (``segment_baseline_s``, ``segment_with_top_latents_s``: the medians of each).

Timings are medians over ``--repeats`` runs after one warm-up, on the CPU unless CUDA is present.

Usage: ``python benchmarks/intervention.py [--zoo ZOO] [--case DIR] [--repeats 5]``
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def _median_s(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _paired_times_s(fns: list[Callable[[], Any]], repeats: int) -> list[list[float]]:
    """Seconds of each of ``fns`` per repeat, run back to back (order reversed every other repeat)."""
    for fn in fns:
        fn()
    times: list[list[float]] = [[] for _ in fns]
    for r in range(repeats):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            t0 = time.perf_counter()
            fns[i]()
            times[i].append(time.perf_counter() - t0)
    return times


def _models(zoo: Path | None, input_size: int) -> list[tuple[str, Any, Any, str]]:
    """``(name, model, sae, hook)`` per architecture."""
    from medseglens_core.models import build_model
    from medseglens_core.sae.base import SAEConfig, build_sae

    if zoo is not None:
        from medseglens_core.analysis.zoo import discover_zoo
        from medseglens_core.interventions.zoo import load_model_dir, load_sae_for

        out = []
        for entry in discover_zoo(zoo):
            model, _ = load_model_dir(zoo, entry.model_id)
            sae, card = load_sae_for(zoo, entry.model_id, entry.sae_id)
            out.append((entry.model_id, model, sae, card.get("hook") or model.default_hook))
        return out
    out = []
    torch.manual_seed(0)
    for arch in ("unet", "segformer"):
        model = build_model(arch, input_size=input_size).eval()
        with torch.no_grad():
            d_in = model.run_prefix(torch.zeros(1, 4, input_size, input_size), model.default_hook).h.shape[1]
        sae = build_sae(SAEConfig(d_in=d_in, d_sae=4 * d_in, k=16)).eval()
        out.append((arch, model, sae, model.default_hook))
    return out


def _case(case_dir: Path | None, tmp: Path) -> Any:
    from medseglens_core.io import load_case

    if case_dir is None:
        from medseglens_core.data.synthetic import write_cohort

        case_dir = write_cohort(tmp / "adult", "adult", 1, seed=0, resolution=2)[0]
    return load_case(case_dir, cohort="adult")


def bench_one(
    name: str, model: Any, sae: Any, hook: str, case: Any, repeats: int, trained_zoo: bool
) -> dict[str, Any]:
    from medseglens_core.analysis.latents import analyse_case
    from medseglens_core.data.preprocess import prepare_case
    from medseglens_core.interventions.apply import apply_spec
    from medseglens_core.interventions.cache import PrefixCache
    from medseglens_core.interventions.spec import Edit, InterventionSpec
    from medseglens_core.models.inference import segment_case

    size = model.cfg.input_size
    t_full = _median_s(lambda: segment_case(model, case, device="cpu"), repeats)
    t0 = time.perf_counter()
    cache = PrefixCache.build(model, prepare_case(case, size), hook)
    t_cache = time.perf_counter() - t0
    z = sae.encode(cache.tokens()[: min(cache.n_tokens, 4096)])
    latent = int(z.sum(0).argmax())
    local = InterventionSpec(
        edits=[Edit(latent=latent, op="scale", value=4.0, scope="predicted_region", region="WT", dilation=3)]
    )
    wide = InterventionSpec(edits=[Edit(latent=latent, op="scale", value=4.0, scope="all")])
    mask = None
    if trained_zoo is False and case.label is not None:
        # an untrained model "predicts" tumour everywhere: scope the edit to the true tumour area
        # (WT dilated by 3 voxels, as a predicted_region scope would be for a trained model)
        from medseglens_core.interventions.apply import dilate, region_mask

        mask = dilate(region_mask(case.label, "WT"), 3)
        local = InterventionSpec(edits=[Edit(latent=latent, op="scale", value=4.0, scope="mask")])
    spacing = tuple(case.geometry.spacing)
    t_local = _median_s(lambda: apply_spec(cache, sae, local, spacing=spacing, mask=mask), repeats)
    t_wide = _median_s(lambda: apply_spec(cache, sae, wide, spacing=spacing), repeats)
    res = apply_spec(cache, sae, local, spacing=spacing, mask=mask)
    seg_runs, lat_runs = _paired_times_s(
        [
            lambda: segment_case(model, case, device="cpu"),
            lambda: analyse_case(model, sae, case, hook=hook, input_size=size),
        ],
        repeats,
    )
    t_seg, t_lat = statistics.median(seg_runs), statistics.median(lat_runs)
    overhead = statistics.median(lat / seg for lat, seg in zip(lat_runs, seg_runs, strict=True))
    return {
        "model": name,
        "arch": model.arch,
        "hook": hook,
        "input_size": size,
        "slices": cache.n_slices,
        "full_forward_s": round(t_full, 4),
        "prefix_cache_build_s": round(t_cache, 4),
        "intervention_s": round(t_local, 4),
        "intervention_rerun_slices": res.rerun_slices,
        "intervention_ratio": round(t_local / t_full, 3),
        "intervention_all_s": round(t_wide, 4),
        "intervention_all_ratio": round(t_wide / t_full, 3),
        "segment_baseline_s": round(t_seg, 4),
        "segment_with_top_latents_s": round(t_lat, 4),
        "top_latent_overhead": round(overhead, 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=Path, default=None)
    ap.add_argument("--case", type=Path, default=None)
    ap.add_argument("--input-size", type=int, default=96)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave the default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        case = _case(args.case, Path(tmp))
        rows = [
            bench_one(*m, case, args.repeats, args.zoo is not None)
            for m in _models(args.zoo, args.input_size)
        ]
    out = {
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
        "case_shape": list(case.image.shape[1:]),
        "targets": {"intervention_ratio": "<= 0.5", "top_latent_overhead": "<= 1.15"},
        "models": rows,
        "meets_targets": all(
            r["intervention_ratio"] <= 0.5 and r["top_latent_overhead"] <= 1.15 for r in rows
        ),
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
