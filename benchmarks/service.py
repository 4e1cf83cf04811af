"""Service benchmark: segmentation of a 2 mm volume over HTTP (real uvicorn) vs the core in-process.

Prints one JSON object::

    {"zoo", "model_id", "sae_id", "volume_shape", "core": {"seconds": [...], "median_s"},
     "http": {"1": {...}, "4": {...}}, "ratio_p50_http_over_core", "target_ratio": 1.10,
     "server_peak_rss_mib", "server_stage_median_s": {...}}

where each ``http[c]`` holds ``clients``, ``requests``, ``throughput_rps``, ``p50_s``, ``p95_s``.
The server runs with ``MEDSEGLENS_PREFIX_CACHE_BYTES=0`` so every request does the whole work
(load the stored NIfTI files, preprocess, one network pass, latent summary, scores, mask write),
the same work the core time measures in this process (in a worker thread, as the server's pool
does). The single-client requests alternate with the core runs (never concurrent), so both see
the same load on a shared machine; ``p50`` of each is compared.
Server peak RSS is ``VmHWM`` of the server process (``/proc/<pid>/status``; psutil is not needed).

Both processes run with ``OMP_WAIT_POLICY=PASSIVE`` (see below) unless the caller sets it.

Usage: ``python benchmarks/service.py [--zoo DIR] [--model ID] [--requests N]``; the zoo defaults
to ``$MEDSEGLENS_ZOO``, and a small untrained zoo (U-Net at 96 px + BatchTopK SAE) is built in a
temporary directory when neither is given (timings do not depend on training).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
# libgomp's default active wait keeps a process's OpenMP threads spinning after each parallel
# region; on a shared CPU the benchmark's own threads then starve the server (measured 4.4 s vs
# 0.3 s per network pass on 2 cores). Passive waiting, set before torch loads, for both processes.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
sys.path.insert(0, str(ROOT))
MODALITIES = ("t1n", "t1c", "t2w", "t2f")


def build_small_zoo(root: Path) -> Path:
    """An untrained U-Net (96 px, zoo defaults) with a 4x BatchTopK SAE on its bottleneck."""
    import torch

    from medseglens_core.models import build_model
    from medseglens_core.models.card import save_model
    from medseglens_core.sae.base import SAEConfig, build_sae
    from medseglens_core.sae.io import save_sae

    torch.manual_seed(0)
    model = build_model("unet").eval()
    save_model(model, {"id": "unet-bench", "training_cohorts": ["adult"]}, root / "models" / "unet-bench")
    size = model.cfg.input_size
    with torch.no_grad():
        d_in = model.run_prefix(torch.zeros(1, 4, size, size), model.default_hook).h.shape[1]
    sae = build_sae(SAEConfig(arch="batchtopk", d_in=d_in, d_sae=4 * d_in, k=16))
    card = {"id": "unet-bench-sae", "model_id": "unet-bench", "hook": model.default_hook}
    save_sae(sae, root / "saes" / "unet-bench-sae", card)
    return root


def pick(zoo: Path, model_id: str | None) -> tuple[str, str]:
    """``(model_id, sae_id)``: the requested (or first) model that has an SAE."""
    from medseglens_core.analysis.zoo import discover_zoo

    entries = [e for e in discover_zoo(zoo) if model_id in (None, e.model_id)]
    if not entries:
        raise SystemExit(f"no model {model_id!r} with an SAE in {zoo}")
    return entries[0].model_id, entries[0].sae_id


def make_case(root: Path) -> Path:
    """One 2 mm synthetic adult case folder (BraTS 2023 names)."""
    from medseglens_core.data.synthetic import write_cohort

    return write_cohort(root / "cases", "adult", 1, seed=7, resolution=2)[0]


def case_files(folder: Path) -> dict[str, Path]:
    """Role -> path of the case's modality files and label."""
    files = {m: next(folder.glob(f"*-{m}.nii.gz")) for m in MODALITIES}
    files["label"] = next(folder.glob("*-seg.nii.gz"))
    return files


def core_once(zoo: Path, model_id: str, sae_id: str, files: dict[str, Path], out: Path) -> float:
    """Seconds for the service's segmentation work done with core calls only (model already loaded)."""
    from medseglens_core.analysis.latents import summarise_latents
    from medseglens_core.data.preprocess import prepare_case
    from medseglens_core.interventions.cache import PrefixCache
    from medseglens_core.io import load_case_from_files, write_label_map
    from medseglens_core.metrics import region_volumes_ml, score_segmentation

    model, sae, hook = _LOADED[(model_id, sae_id)]
    start = time.perf_counter()
    images = {m: files[m] for m in MODALITIES}
    case = load_case_from_files(images, label=files["label"], case_id="bench")
    prepared = prepare_case(case, model.cfg.input_size)
    cache = PrefixCache.build(model, prepared, hook)
    labels = cache.baseline_labels
    hs = [p.h for _, _, p in cache.chunks]
    summarise_latents(sae, hs, prepared, labels, case.label, 10, affine=case.geometry.affine)
    score_segmentation(labels, case.label, case.geometry.spacing)
    region_volumes_ml(labels, case.geometry.spacing)
    write_label_map(labels, case.geometry, out / "mask.nii.gz")
    return time.perf_counter() - start


_LOADED: dict[tuple[str, str], Any] = {}


def load(zoo: Path, model_id: str, sae_id: str) -> None:
    from medseglens_core.analysis.encode import resolve_hook
    from medseglens_core.models.card import load_model
    from medseglens_core.sae.io import load_sae

    model, _ = load_model(zoo / "models" / model_id)
    sae, card = load_sae(zoo / "saes" / sae_id)
    _LOADED[(model_id, sae_id)] = (model.eval(), sae.eval(), resolve_hook(model, None, card))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(zoo: Path, data_dir: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "MEDSEGLENS_DATA_DIR": str(data_dir), "MEDSEGLENS_PREFIX_CACHE_BYTES": "0",
           "MEDSEGLENS_DEVICE": "cpu", "MEDSEGLENS_LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)}  # fmt: skip
    cmd = [sys.executable, "-c", "from service.cli import main; main()", "serve", "--zoo", str(zoo),
           "--port", str(port)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"server did not start: {proc.communicate()[1][-2000:]}")


def peak_rss_mib(pid: int) -> float | None:
    """Peak resident set size of ``pid`` in MiB (``VmHWM`` of /proc/<pid>/status), None elsewhere."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def http_run(base: str, key: str, body: dict[str, Any], clients: int, per_client: int) -> dict[str, Any]:
    """``clients`` threads, each sending ``per_client`` segmentations one after the other."""
    latencies: list[float] = []
    stages: list[dict[str, float]] = []

    def worker(_: int) -> None:
        with httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=600) as http:
            for _ in range(per_client):
                t0 = time.perf_counter()
                r = http.post("/v1/segmentations", json=body)
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 201:
                    raise SystemExit(f"segmentation failed: {r.status_code} {r.text[:500]}")
                stages.append(r.json()["timings"])

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, range(clients)))
    wall = time.perf_counter() - start
    ordered = sorted(latencies)
    return {
        "clients": clients,
        "requests": len(latencies),
        "wall_s": round(wall, 3),
        "throughput_rps": round(len(latencies) / wall, 3),
        "p50_s": round(statistics.median(ordered), 4),
        "p95_s": round(ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))], 4),
        "_stages": stages,
    }


def merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One summary of several single-request runs (throughput over their summed wall time)."""
    lat = sorted(r["p50_s"] for r in runs)
    wall = sum(r["wall_s"] for r in runs)
    return {
        "clients": 1,
        "requests": len(runs),
        "wall_s": round(wall, 3),
        "throughput_rps": round(len(runs) / wall, 3),
        "p50_s": round(statistics.median(lat), 4),
        "p95_s": round(lat[min(len(lat) - 1, int(round(0.95 * (len(lat) - 1))))], 4),
        "_stages": [s for r in runs for s in r["_stages"]],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--zoo", type=Path, default=os.environ.get("MEDSEGLENS_ZOO"))
    ap.add_argument("--model", default=None, help="model id (default: the first with an SAE)")
    ap.add_argument("--requests", type=int, default=6, help="requests per client count")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="msl-bench-service-"))
    zoo = Path(args.zoo) if args.zoo else build_small_zoo(work / "zoo")
    model_id, sae_id = pick(zoo, args.model)
    files = case_files(make_case(work))
    load(zoo, model_id, sae_id)

    from service.auth import create_key
    from service.config import Settings
    from service.db import create_tables, make_engine, make_sessionmaker, session_scope

    data_dir = work / "data"
    data_dir.mkdir()
    engine = make_engine(Settings(data_dir=data_dir).database_url)
    create_tables(engine)
    with session_scope(make_sessionmaker(engine)) as session:
        _, key = create_key(session, "bench", "admin")
    engine.dispose()
    port = free_port()
    proc = start_server(zoo, data_dir, port)
    base = f"http://127.0.0.1:{port}"
    try:
        with httpx.Client(base_url=base, headers={"X-API-Key": key}, timeout=600) as http:
            upload = {
                role: (f"{role}.nii.gz", p.read_bytes(), "application/gzip") for role, p in files.items()
            }
            volume = http.post("/v1/volumes", files=upload)
            if volume.status_code != 201:
                raise SystemExit(f"upload failed: {volume.status_code} {volume.text[:500]}")
        body = {"volume_id": volume.json()["id"], "model_id": model_id, "sae_id": sae_id, "top_k": 10}
        http_run(base, key, body, 1, 1)  # warm-up
        # The core runs in a worker thread, as the server's pool runs it (torch's intra-op thread
        # pool behaves differently on the main thread), interleaved with the single-client requests
        # so both see the same load on a shared machine.
        with ThreadPoolExecutor(1) as runner:
            runner.submit(core_once, zoo, model_id, sae_id, files, work).result()  # warm-up
            core, singles = [], []
            for _ in range(args.requests):
                core.append(runner.submit(core_once, zoo, model_id, sae_id, files, work).result())
                singles.append(http_run(base, key, body, 1, 1))
        runs = {"1": merge(singles), "4": http_run(base, key, body, 4, max(1, args.requests // 4))}
        rss = peak_rss_mib(proc.pid)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    stage_keys = sorted({k for s in runs["1"]["_stages"] for k in s})
    stages = {k: round(statistics.median(s.get(k, 0.0) for s in runs["1"]["_stages"]), 4) for k in stage_keys}
    for run in runs.values():
        run.pop("_stages")
    core_median = statistics.median(core)
    print(
        json.dumps(
            {
                "zoo": str(zoo),
                "model_id": model_id,
                "sae_id": sae_id,
                "volume_shape": volume.json()["shape"],
                "core": {"seconds": [round(c, 4) for c in core], "median_s": round(core_median, 4)},
                "http": runs,
                "ratio_p50_http_over_core": round(runs["1"]["p50_s"] / core_median, 3),
                "target_ratio": 1.10,
                "server_stage_median_s": stages,
                "server_peak_rss_mib": rss,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
