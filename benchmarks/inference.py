"""Volume inference speed and memory: seconds per volume per model, peak RSS; prints JSON.

Per model and grid: ``pipeline_over_bare_forward`` (``segment_case`` seconds over the bare network
forward over the same prepared slices and batch size; target <= 1.2 on the 1 mm grid) and
``stages_s``, each stage timed on its own (load NIfTI, prepare = mask + crop + z-score + resample,
forward, softmax, undo = resample back + argmax + placement, write NIfTI).

Grids: the 2 mm MNI grid of a synthetic adult case (99x117x95) and a 1 mm BraTS-size grid
(240x240x155: the 1 mm synthetic case centred and cropped/padded to that shape). Timing covers
:func:`segment_case` end to end (crop, resample, normalise, slice batches, softmax, back to the
grid), not model loading. Also reported: process CPU seconds per volume, summed over
threads (with ``--threads 1`` that is the uncontended single-core time even on a busy machine). Weights do not change the speed: without ``--zoo`` the models are
freshly initialised with their default configs.

    .venv/bin/python benchmarks/inference.py [--zoo ZOO] [--threads 2] [--repeats 3] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch

BRATS_SHAPE = (240, 240, 155)


def _case(resolution: int, shape: tuple[int, int, int] | None = None):
    from medseglens_core.data.synthetic import COHORTS, generate_case
    from medseglens_core.io import MODALITIES, Case, Geometry

    syn = generate_case(COHORTS["adult"], seed=7, resolution=resolution)
    image = np.stack([syn.images[m] for m in MODALITIES])
    label = syn.label
    if shape is not None:  # centre-crop / pad each axis to the target grid
        out_img = np.zeros((4, *shape), np.float32)
        out_lab = np.zeros(shape, np.uint8)
        src, dst = [], []
        for n, m in zip(image.shape[1:], shape, strict=True):
            k = min(n, m)
            a, b = (n - k) // 2, (m - k) // 2
            src.append(slice(a, a + k))
            dst.append(slice(b, b + k))
        out_img[(slice(None), *dst)] = image[(slice(None), *src)]
        out_lab[tuple(dst)] = label[tuple(src)]
        image, label = out_img, out_lab
    affine = np.diag([float(resolution)] * 3 + [1.0])
    return Case(f"bench-{resolution}mm", image, label, Geometry.from_affine(affine, image.shape[1:]), "adult")


def _models(zoo: Path | None):
    from medseglens_core.models import build_model
    from medseglens_core.models.card import load_model

    if zoo is not None:
        for card in sorted((zoo / "models").glob("*/card.json")):
            model, meta = load_model(card.parent)
            yield meta["id"], model
        return
    for arch in ("unet", "segformer"):
        yield f"{arch}-default", build_model(arch).eval()


def _time(model, case, device: str, repeats: int, batch_size: int) -> dict:
    from medseglens_core.models.inference import segment_case

    segment_case(model, case, device=device, batch_size=batch_size)  # warm-up
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        seg = segment_case(model, case, device=device, batch_size=batch_size)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    stages = _stages(model, case, device, repeats, batch_size)
    return {
        "pipeline_over_bare_forward": round(min(times) / stages["forward_s"], 3),
        "stages_s": stages,
        "seconds_per_volume": round(min(times), 3),
        "seconds_all": [round(t, 3) for t in times],
        # CPU seconds summed over threads: on a shared machine, wall time overstates the cost
        "cpu_seconds_per_volume": round(min(cpu), 3),
        "slices_run": int(seg.prepared.slices.shape[0]),
    }


def _stages(model, case, device: str, repeats: int, batch_size: int) -> dict:
    """Best-of-``repeats`` seconds of each stage of ``segment_case`` run on its own, plus reading
    the case from NIfTI files and writing the label map (not part of ``segment_case``).

    ``forward_s`` is the bare network over the same prepared slices and batch size (no softmax):
    the denominator of ``pipeline_over_bare_forward``.
    """
    import tempfile

    from medseglens_core.data.preprocess import prepare_case
    from medseglens_core.io import MODALITIES, load_case, write_label_map, write_volume
    from medseglens_core.models.inference import resolve_device

    dev = resolve_device(device)
    model.to(dev).eval()

    def best(fn):
        fn()
        out = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            out.append(time.perf_counter() - t0)
        return round(min(out), 4)

    prepared = prepare_case(case, model.cfg.input_size)
    slices = prepared.slices

    def forward(fn=None):
        outs = []
        with torch.inference_mode():
            for s in range(0, slices.shape[0], batch_size):
                y = model(slices[s : s + batch_size].to(dev, torch.float32))
                outs.append(fn(y) if fn else y)
        return outs

    logits = torch.cat([y.float().cpu() for y in forward()])
    probs = torch.softmax(logits, dim=1)
    labels = prepared.argmax_to_case_grid(probs)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / case.case_id
        folder.mkdir()
        for i, m in enumerate(MODALITIES):  # BraTS 2023 names, on the case's grid
            write_volume(case.image[i], case.geometry, folder / f"{case.case_id}-{m}.nii.gz")
        out = {
            "load_nifti_s": best(lambda: load_case(folder)),
            "prepare_s": best(lambda: prepare_case(case, model.cfg.input_size)),
            "forward_s": best(forward),
            "softmax_s": best(lambda: torch.softmax(logits, dim=1)),
            "undo_s": best(lambda: prepared.argmax_to_case_grid(probs)),
            "write_s": best(lambda: write_label_map(labels, case.geometry, Path(tmp) / "seg.nii.gz")),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--zoo", type=Path, default=None, help="zoo folder with models/<id>/ (default: fresh models)"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = {"2mm_mni": _case(2), "1mm_brats_240x240x155": _case(1, BRATS_SHAPE)}
    results = {}
    for name, model in _models(args.zoo):
        results[name] = {
            "architecture": model.arch,
            "input_size": model.cfg.input_size,
            **{
                grid: _time(model, case, args.device, args.repeats, args.batch_size)
                for grid, case in cases.items()
            },
        }
    device = torch.device("cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu")
    out = {
        "device": torch.cuda.get_device_name(0)
        if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()})",
        "torch_threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "grids": {k: list(v.image.shape[1:]) for k, v in cases.items()},
        "models": results,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
