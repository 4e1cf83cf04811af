"""SAE training step against one encoder-shaped GEMM; prints one JSON document on stdout.

For a BatchTopK SAE (d_in 256, k 32, aux_k 256, batch 4096; ``--d-sae``, default 2048) it times,
in one run and interleaved repeat by repeat:

- ``gemm``: one ``torch.mm`` of the encoder shape ``(B, d_in) @ (d_in, d_sae)`` into a
  preallocated output (the floor the step is measured against);
- ``step``: one full training iteration with aux-k off (no dead latents): the fast sparse step
  (:func:`medseglens_core.sae.step.fast_step`), gradient projection, fused Adam, decoder
  renormalisation -- what :func:`~medseglens_core.sae.train.train_sae` runs per batch;
- ``step_auxk``: the same iteration with a fraction of the latents marked dead (every
  ``1/f``-th latent, f from ``--dead-fractions``, default 0.1 and 0.5), so the aux-k term runs;
- ``fast_step_only``: the loss-and-gradient step alone (aux-k off), without the optimizer.

On a CPU with native bf16 (``machine.native_bf16``) the step filters the encoder's entries with
a bf16 GEMM (:mod:`medseglens_core.sae.bf16scan`) while fewer than a quarter of the latents are
dead; ``gemm`` stays the float32 product the issue's target names.

Each repeat runs the variants back to back in an order that rotates between repeats; the
ratios are medians of the per-repeat ratios, so a load change on a shared machine between
repeats does not read as a cost (the medians of the times are reported too). Targets (issue
15): ``ratio_step_to_gemm <= 1.5`` and ``ratio_auxk_to_step <= 2`` at every dead fraction.
OpenMP waits passively (``OMP_WAIT_POLICY=PASSIVE`` unless set), as under ``medseglens train-sae``.

Usage: ``python benchmarks/sae_step.py [--repeats 15] [--threads 1] [--d-sae 2048]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.sae_train import synthetic_tokens  # noqa: E402
from medseglens_core.sae import bf16scan  # noqa: E402
from medseglens_core.sae.base import SAEConfig, build_sae  # noqa: E402
from medseglens_core.sae.step import fast_step  # noqa: E402
from medseglens_core.sae.train import init_from_data  # noqa: E402

D_IN, K, AUX_K, BATCH = 256, 32, 256, 4096
TARGET_STEP, TARGET_AUX = 1.5, 2.0


def _iteration(d_sae: int, data: torch.Tensor, dead_fraction: float, optimise: bool) -> Callable[[], None]:
    """One training iteration per call on its own SAE (aux-k on when ``dead_fraction > 0``)."""
    sae = build_sae(SAEConfig(d_in=D_IN, d_sae=d_sae, k=K, batch_size=BATCH, aux_k=AUX_K))
    init_from_data(sae, data[:16_384])
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4, fused=True)
    dead = torch.zeros(d_sae, dtype=torch.bool)
    if dead_fraction > 0:
        dead[:: max(1, round(1 / dead_fraction))] = True
    batches = [b * sae.scale for b in data.split(BATCH)]
    count = [0]

    def one() -> None:
        x = batches[count[0] % len(batches)]
        count[0] += 1
        fast_step(sae, x, dead)
        if optimise:
            sae.remove_parallel_grad_()
            opt.step()
            sae.normalize_decoder_()

    return one


def _interleaved(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each function, ``repeats`` rounds, call order rotated every round."""
    names = list(fns)
    for name in names:  # warm-up: allocator, MKL, the selection hint
        fns[name]()
        fns[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            t = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t)
    return times


def _ratio(num: list[float], den: list[float]) -> float:
    return statistics.median(a / b for a, b in zip(num, den, strict=True))


def bench(d_sae: int, data: torch.Tensor, dead_fractions: list[float], repeats: int) -> dict:
    a, w = torch.randn(BATCH, D_IN), torch.randn(D_IN, d_sae)
    out = torch.empty(BATCH, d_sae)
    fns: dict[str, Callable[[], None]] = {
        "gemm": lambda: torch.mm(a, w, out=out),
        "step": _iteration(d_sae, data, 0.0, True),
        "fast_step_only": _iteration(d_sae, data, 0.0, False),
    }
    for f in dead_fractions:
        fns[f"step_auxk_{f:g}"] = _iteration(d_sae, data, f, True)
    t = _interleaved(fns, repeats)
    aux = {
        f"{f:g}": {
            "dead_fraction": f,
            "seconds": statistics.median(t[f"step_auxk_{f:g}"]),
            "ratio_auxk_to_step": _ratio(t[f"step_auxk_{f:g}"], t["step"]),
            "ratio_auxk_to_gemm": _ratio(t[f"step_auxk_{f:g}"], t["gemm"]),
        }
        for f in dead_fractions
    }
    ratio_step = _ratio(t["step"], t["gemm"])
    ratio_aux = max((v["ratio_auxk_to_step"] for v in aux.values()), default=float("nan"))
    return {
        "shapes": {"batch": BATCH, "d_in": D_IN, "d_sae": d_sae, "k": K, "aux_k": AUX_K},
        "gemm_seconds": statistics.median(t["gemm"]),
        "step_seconds": statistics.median(t["step"]),
        "fast_step_only_seconds": statistics.median(t["fast_step_only"]),
        "ratio_step_to_gemm": ratio_step,
        "ratio_fast_step_only_to_gemm": _ratio(t["fast_step_only"], t["gemm"]),
        "ratio_auxk_to_step": ratio_aux,
        "auxk_by_dead_fraction": aux,
        "meets_targets": ratio_step <= TARGET_STEP and ratio_aux <= TARGET_AUX,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    ap.add_argument("--d-sae", type=int, nargs="+", default=[2048])
    ap.add_argument("--dead-fractions", type=float, nargs="+", default=[0.1, 0.5])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    data = synthetic_tokens(BATCH * 4)
    results = [bench(m, data, args.dead_fractions, args.repeats) for m in args.d_sae]
    print(
        json.dumps(
            {
                "benchmark": "sae_step",
                "machine": {
                    "cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(),
                    "threads": torch.get_num_threads(),
                    "load_average_1min": os.getloadavg()[0],
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                    "torch": torch.__version__,
                    "device": "cpu",
                    "native_bf16": bf16scan.NATIVE_BF16,
                },
                "targets": {"ratio_step_to_gemm": TARGET_STEP, "ratio_auxk_to_step": TARGET_AUX},
                "repeats": args.repeats,
                "results": results,
                "meets_targets": all(r["meets_targets"] for r in results),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
