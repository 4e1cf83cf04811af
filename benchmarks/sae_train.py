"""SAE training speed and memory benchmark; prints one JSON document on stdout.

For d_in 256, k 32, batch 4096 and two dictionary sizes (2048, 8192) it measures, in one run,
at 1 torch thread and (if different) at torch's default thread count:

- ``matmul_flops``: FLOP/s of a plain ``torch.mm`` of the encoder shape ``(B, d_in) @ (d_in, d_sae)``
  into a preallocated output, at the same thread setting;
- ``fast``: the fast trainer (sparse step + gradient projection + fused Adam + decoder renorm)
  in tokens/s and in dense-equivalent FLOP/s as a fraction of ``matmul_flops``;
- ``reference``: the same loop with the naive autograd step (dense decode, b_dec in autograd,
  full sorted top-k), and the fast trainer's speedup over it.

On a shared machine the load changes from second to second, so each timed training iteration
is paired with a matmul timed right before it, and each reported fraction is the median of the
per-pair ratios (the medians of the two times are reported too). OpenMP waits passively
(``OMP_WAIT_POLICY=PASSIVE`` unless set), as under ``medseglens train-sae``.

FLOP accounting (identical for both trainers): ``3 * 2 * B * d_in * d_sae`` per step, the dense
equivalent of the three GEMMs a step needs (encoder forward, encoder weight gradient, decoder).
The fast step actually runs only the encoder forward densely (the other two are sparse, about
``k / d_sae`` of that work), so its fraction can exceed 1; ``actual_dense_flops_per_step`` says so.

Peak RSS is measured in fresh subprocesses that train from shards ON DISK (``train_sae``,
streamed) for 1e5 and 1e6 tokens; streaming means the two peaks should be about equal.

With ``--device cuda`` everything (data, SAE, optimiser, the matmul) lives on the GPU, each
timed call ends with a synchronise, and peak RSS is not measured (the issue's H100 target:
>= 2M tokens/s at d_sae 2048).

Usage: ``python benchmarks/sae_train.py [--quick] [--threads N] [--device cpu|cuda]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# libgomp's default busy-waiting stalls multi-threaded runs when another process holds a core
# (measured here at 2 threads: 1.7 s -> 0.4 s per step). Set before torch loads, as the CLI
# does (service/cli/__init__.py); a caller's own setting wins and is reported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medseglens_core.sae.base import SAEConfig, build_sae  # noqa: E402
from medseglens_core.sae.reference import reference_step  # noqa: E402
from medseglens_core.sae.shards import ActivationShards, ShardWriter  # noqa: E402
from medseglens_core.sae.step import fast_step  # noqa: E402
from medseglens_core.sae.train import train_sae  # noqa: E402

D_IN, K, BATCH = 256, 32, 4096


def synthetic_tokens(n: int, seed: int = 0) -> torch.Tensor:
    """Synthetic activation-like tokens: a sparse non-negative mix of 4096 directions + noise."""
    g = torch.Generator().manual_seed(seed)
    atoms = torch.randn(4096, D_IN, generator=g)
    idx = torch.randint(0, 4096, (n, 16), generator=g)
    coef = torch.rand(n, 16, generator=g)
    out = 0.1 * torch.randn(n, D_IN, generator=g)
    for j in range(idx.shape[1]):  # accumulate term by term: no (n, 16, d_in) temporary
        out += coef[:, j : j + 1] * atoms[idx[:, j]]
    return out


def _median(xs: list[float]) -> float:
    return float(np.median(xs))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _paired(step, mm, reps: int, device: torch.device) -> tuple[list[float], list[float]]:
    """Seconds of ``reps`` calls of ``step``, each right after one timed ``mm`` call."""
    step()
    mm()
    _sync(device)
    t_step, t_mm = [], []
    for _ in range(reps):
        t = time.perf_counter()
        mm()
        _sync(device)
        t_mm.append(time.perf_counter() - t)
        t = time.perf_counter()
        step()
        _sync(device)
        t_step.append(time.perf_counter() - t)
    return t_step, t_mm


def _train_iteration(step_fn, d_sae: int, data: torch.Tensor):
    """One full training iteration (step, projection, fused Adam, renorm) per call, on ``data``'s device."""
    sae = build_sae(
        SAEConfig(d_in=D_IN, d_sae=d_sae, k=K, batch_size=BATCH, aux_k=256, liveness_window=10**9)
    ).to(data.device)
    opt = torch.optim.Adam(sae.parameters(), lr=1e-4, fused=True)
    dead = torch.zeros(d_sae, dtype=torch.bool, device=data.device)
    batches = data.split(BATCH)
    it = iter(range(10**9))

    def one() -> None:
        x = batches[next(it) % len(batches)]
        step_fn(sae, x, dead)
        sae.remove_parallel_grad_()
        opt.step()
        sae.normalize_decoder_()

    return one


def _trainer_result(t_step: list[float], t_mm: list[float], step_flops: int, gemm_flops: int) -> dict:
    s = _median(t_step)
    ratios = [step_flops / a / (gemm_flops / b) for a, b in zip(t_step, t_mm, strict=True)]
    return {
        "seconds_per_step": s,
        "tokens_per_s": BATCH / s,
        "flops": step_flops / s,
        "fraction_of_matmul": _median(ratios),
        "matmul_seconds_paired": _median(t_mm),
    }


def bench_speed(d_sae: int, data: torch.Tensor, steps: int) -> dict:
    dev = data.device
    a, w = torch.randn(BATCH, D_IN, device=dev), torch.randn(D_IN, d_sae, device=dev)
    out = torch.empty(BATCH, d_sae, device=dev)

    def mm() -> None:
        torch.mm(a, w, out=out)

    gemm_flops = 2 * BATCH * D_IN * d_sae
    step_flops = 3 * gemm_flops
    fast_t, fast_mm = _paired(_train_iteration(fast_step, d_sae, data), mm, steps, dev)
    ref_t, ref_mm = _paired(_train_iteration(reference_step, d_sae, data), mm, max(3, steps // 3), dev)
    fast = _trainer_result(fast_t, fast_mm, step_flops, gemm_flops)
    fast["actual_dense_flops_per_step"] = gemm_flops
    return {
        "d_in": D_IN,
        "d_sae": d_sae,
        "k": K,
        "batch": BATCH,
        "matmul_flops": gemm_flops / _median(fast_mm + ref_mm),
        "flops_per_step": step_flops,
        "fast": fast,
        "reference": _trainer_result(ref_t, ref_mm, step_flops, gemm_flops),
        "speedup_vs_reference": _median(ref_t) / _median(fast_t),
    }


def _rss_child(shard_dir: str, tokens: int, d_sae: int) -> None:
    shards = ActivationShards.open(shard_dir)
    cfg = SAEConfig(d_in=D_IN, d_sae=d_sae, k=K, batch_size=BATCH)
    t = time.perf_counter()
    train_sae(cfg, shards, token_budget=tokens, device="cpu", eval_tokens=16384)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec from the parent.
    hwm = next(
        line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmHWM")
    )
    peak_mib = int(hwm.split()[1]) / 1024
    print(json.dumps({"tokens": tokens, "peak_rss_mib": peak_mib, "seconds": time.perf_counter() - t}))


def bench_rss(token_counts: list[int], d_sae: int, threads: int) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        w = ShardWriter(tmp, D_IN, shard_tokens=65_536)
        c = w.add_case("synthetic", None)
        for s in range(0, max(token_counts), 65_536):
            n = min(65_536, max(token_counts) - s)
            w.add(synthetic_tokens(n, seed=s).numpy(), case=c, z=0, y=0, x=0, label=0)
        w.close()
        out = []
        for n in token_counts:
            code = (
                f"import torch; torch.set_num_threads({threads}); import sys; sys.argv=['x'];"
                f"from benchmarks.sae_train import _rss_child; _rss_child({tmp!r}, {n}, {d_sae})"
            )
            res = subprocess.run(
                [sys.executable, "-c", code],
                capture_output=True,
                text=True,
                check=True,
                cwd=str(Path(__file__).resolve().parents[1]),
            )
            out.append(json.loads(res.stdout.strip().splitlines()[-1]))
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer steps; RSS at 1e5 and 3e5 tokens")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="measure at this thread count only (default: 1 and torch's default, if different)",
    )
    ap.add_argument("--device", default="cpu", help="cpu or cuda[:N] (cuda: no RSS measurement)")
    args = ap.parse_args()
    from medseglens_core.models.inference import resolve_device

    device = resolve_device(args.device)
    default_threads = torch.get_num_threads()
    settings = [args.threads] if args.threads else sorted({1, default_threads})
    torch.manual_seed(0)
    steps = 6 if args.quick else 15
    data = synthetic_tokens(BATCH * 4).to(device)
    speed = {}
    for threads in settings:
        torch.set_num_threads(threads)
        speed[str(threads)] = [bench_speed(m, data, steps) for m in (2048, 8192)]
    counts = [100_000, 300_000] if args.quick else [100_000, 1_000_000]
    rss = bench_rss(counts, 2048, settings[0]) if device.type == "cpu" else []
    print(
        json.dumps(
            {
                "benchmark": "sae_train",
                "machine": {
                    "cpu": platform.processor() or platform.machine(),
                    "cores": os.cpu_count(),
                    "default_threads": default_threads,
                    "load_average_1min": os.getloadavg()[0],
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
                    "torch": torch.__version__,
                    "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                },
                "flop_accounting": "per step 3 * 2*B*d_in*d_sae: dense-equivalent encoder forward, encoder "
                "weight grad, decoder; same count for both trainers; matmul measured at the same thread "
                "setting, paired with each step",
                "speed_by_threads": speed,
                "peak_rss": rss,
                "rss_growth_ratio": rss[-1]["peak_rss_mib"] / rss[0]["peak_rss_mib"] if rss else None,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
