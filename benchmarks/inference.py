"""Volume inference speed and memory: seconds per volume per model, peak RSS; prints JSON.

Per model and grid: ``pipeline_over_bare_forward`` (``segment_case`` seconds over the bare network
forward over the same prepared slices and batch size, the two run back to back in each repeat
in alternating order; the median of the per-repeat ratios; target <= 1.2 on the 1 mm grid), the
same ratio in process CPU seconds (``pipeline_over_bare_forward_cpu``: on a shared machine the
wall ratio swings with the other processes, the CPU ratio much less), the best pipeline over the
best bare forward timed apart (``pipeline_min_over_forward_min``, the figure reported before the
ratios were paired) and ``stages_s``, each stage timed on its own: ``load_nifti_s`` (read the four files, canonicalise to
RAS, stack), ``canonicalise_s`` (that reorienting copy into the stack alone), ``prepare_s`` (all of
``prepare_case`` as ``segment_case`` runs it) and its parts ``mask_crop_s`` (brain mask + crop box),
``resample_stats_s`` (copy to slices, pad, antialiased resample of the raw intensities and the
mask, the per-modality mean and std inside the mask summed on the way) and ``normalise_s`` (the
z-score on the model grid), ``forward_s``, ``softmax_s``,
``undo_s`` (resample back + first argmax + placement), ``write_s`` (write the NIfTI label map).

Grids: the 2 mm MNI grid of a synthetic adult case (99x117x95) and a 1 mm BraTS-size grid
(240x240x155: the 1 mm synthetic case centred and cropped/padded to that shape). Timing covers
:func:`segment_case` end to end (crop, resample, normalise, slice batches, softmax, back to the
grid), not model loading. Also reported: process CPU seconds per volume, summed over
threads (with ``--threads 1`` that is the uncontended single-core time even on a busy machine). Weights do not change the speed: without ``--zoo`` the models are
freshly initialised with their default configs. The in-memory case has the memory order
``load_case`` gives (axial slices contiguous, as in the NIfTI files; ``--layout c`` for C order,
as the benchmark used before).

    .venv/bin/python benchmarks/inference.py [--zoo ZOO] [--threads 2] [--repeats 3] [--device auto]
        [--precision fp32|bf16|fp16] [--layout loader|c]
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from medseglens_core.models.base import PRECISIONS

BRATS_SHAPE = (240, 240, 155)


def _case(resolution: int, shape: tuple[int, int, int] | None = None, layout: str = "loader"):
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
    if layout == "loader":  # load_case's memory order: (4, Z, Y, X) in memory, viewed as (4, X, Y, Z)
        stack = np.empty(image.shape[:1] + image.shape[:0:-1], np.float32).transpose(0, 3, 2, 1)
        stack[...] = image
        image = stack
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


def _bare_forward(model, slices: torch.Tensor, dev: torch.device, batch_size: int, fn=None) -> list:
    """The network alone over ``slices`` in batches of ``batch_size`` (no softmax): the
    denominator of ``pipeline_over_bare_forward``. ``fn`` maps each batch's output."""
    outs = []
    with torch.inference_mode():
        for s in range(0, slices.shape[0], batch_size):
            y = model(slices[s : s + batch_size].to(dev, torch.float32))
            outs.append(fn(y) if fn else y)
    return outs


def _time(model, case, device: str, repeats: int, batch_size: int) -> dict:
    from medseglens_core.data.preprocess import prepare_case
    from medseglens_core.models.inference import resolve_device, segment_case

    dev = resolve_device(device)
    segment_case(model, case, device=device, batch_size=batch_size)  # warm-up
    slices = prepare_case(case, model.cfg.input_size, with_labels=False).slices

    def timed(fn):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0, time.process_time() - c0, out

    runs = {
        "pipeline": lambda: segment_case(model, case, device=device, batch_size=batch_size),
        "forward": lambda: _bare_forward(model, slices, dev, batch_size),
    }
    times, cpu, ratios, ratios_cpu = [], [], [], []
    for r in range(repeats):  # pipeline and bare forward back to back, the order alternating
        done = {
            name: timed(runs[name])
            for name in (("pipeline", "forward") if r % 2 == 0 else ("forward", "pipeline"))
        }
        (t, c, seg), (ft, fc, _) = done["pipeline"], done["forward"]
        times.append(t)
        cpu.append(c)
        ratios.append(t / ft)
        ratios_cpu.append(c / fc)
    stages = _stages(model, case, device, repeats, batch_size)
    forward_cpu = stages.pop("forward_cpu_s")
    return {
        # the median of the per-repeat ratios: a load change between repeats does not read as cost
        "pipeline_over_bare_forward": round(statistics.median(ratios), 3),
        # the same ratio in process CPU seconds: not inflated by other processes on the machine
        "pipeline_over_bare_forward_cpu": round(statistics.median(ratios_cpu), 3),
        # best pipeline over best bare forward (timed apart, in the stage breakdown)
        "pipeline_min_over_forward_min": round(min(times) / stages["forward_s"], 3),
        "forward_cpu_s": forward_cpu,
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

    cpu: dict[str, float] = {}

    def best(fn, name: str | None = None):
        fn()
        out, out_cpu = [], []
        for _ in range(repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            out.append(time.perf_counter() - t0)
            out_cpu.append(time.process_time() - c0)
        if name:
            cpu[name] = round(min(out_cpu), 4)
        return round(min(out), 4)

    prepared = prepare_case(case, model.cfg.input_size)
    slices = prepared.slices

    def forward(fn=None):
        return _bare_forward(model, slices, dev, batch_size, fn)

    logits = torch.cat([y.float().cpu() for y in forward()])
    probs = torch.softmax(logits, dim=1)
    labels = prepared.argmax_to_case_grid(probs)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / case.case_id
        folder.mkdir()
        for i, m in enumerate(MODALITIES):  # BraTS 2023 names, on the case's grid
            write_volume(case.image[i], case.geometry, folder / f"{case.case_id}-{m}.nii.gz")
        size = model.cfg.input_size
        out = {
            "load_nifti_s": best(lambda: load_case(folder)),
            "canonicalise_s": best(lambda: _canonicalise(case)),
            "prepare_s": best(lambda: prepare_case(case, size, with_labels=False)),
            **_prepare_parts(case, size, best),
            "forward_s": best(forward, "forward_cpu_s"),
            "softmax_s": best(lambda: torch.softmax(logits, dim=1)),
            "undo_s": best(lambda: prepared.argmax_to_case_grid(probs)),
            "write_s": best(lambda: write_label_map(labels, case.geometry, Path(tmp) / "seg.nii.gz")),
        }
    return {**out, **cpu}


def _canonicalise(case) -> np.ndarray:
    """The reorienting copy of ``load_case``: each modality into a stack in the files' order."""
    import nibabel as nib

    x, y, z = case.geometry.shape
    stack = np.empty((case.image.shape[0], z, y, x), dtype=np.float32).transpose(0, 3, 2, 1)
    for i in range(case.image.shape[0]):
        stack[i] = nib.orientations.apply_orientation(case.image[i], case.geometry.ornt)
    return stack


def _prepare_parts(case, size: int, best) -> dict:
    """``prepare_case``'s parts, each timed on its own over the same case."""
    from medseglens_core.data import preprocess as pp

    image, spacing = case.image, case.geometry.spacing
    mask = pp.brain_mask(image)
    x0, x1, y0, y1, z0, z1 = box = pp.crop_box(mask, spacing, pp.DEFAULT_MARGIN_MM)
    crop, cmask = image[:, x0:x1, y0:y1, z0:z1], mask[x0:x1, y0:y1, z0:z1]
    pad, padded = pp._square_pad(x1 - x0, y1 - y0, spacing[0], spacing[1])
    res = pp._resampled_raw(crop, cmask, pad, padded, size)
    assert box == pp.prepare_case(case, size, with_labels=False).record.crop
    return {
        "mask_crop_s": best(lambda: pp.crop_box(pp.brain_mask(image), spacing, pp.DEFAULT_MARGIN_MM)),
        "resample_stats_s": best(lambda: pp._resampled_raw(crop, cmask, pad, padded, size)),
        "normalise_s": best(lambda: pp._zscored(res)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--zoo", type=Path, default=None, help="zoo folder with models/<id>/ (default: fresh models)"
    )
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument(
        "--precision",
        choices=sorted(PRECISIONS),
        default="fp32",
        help="network precision (bf16/fp16 autocast; fp16 needs CUDA); the bare forward runs in it too",
    )
    ap.add_argument(
        "--layout",
        choices=("loader", "c"),
        default="loader",
        help="memory order of the in-memory case: load_case's (default) or C order",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = {
        "2mm_mni": _case(2, layout=args.layout),
        "1mm_brats_240x240x155": _case(1, BRATS_SHAPE, layout=args.layout),
    }
    results = {}
    for name, model in _models(args.zoo):
        model.set_precision(args.precision)
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
        "precision": args.precision,
        "batch_size": args.batch_size,
        "layout": args.layout,
        "grids": {k: list(v.image.shape[1:]) for k, v in cases.items()},
        "models": results,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
