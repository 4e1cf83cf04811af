"""Generate synthetic BraTS-2023-style cases and write cohorts to disk."""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medseglens_core.data.cohorts import CohortParams, apply_overrides, get_cohort
from medseglens_core.data.synthetic.anatomy import deform_anatomy, load_templates
from medseglens_core.data.synthetic.imaging import (
    add_noise_and_gain,
    apply_bias,
    apply_thick_slices,
    compose,
    subject_table,
)
from medseglens_core.data.synthetic.lesion import make_lesion
from medseglens_core.io.case import MODALITIES

LABELS: dict[str, int] = {"background": 0, "NCR": 1, "SNFH": 2, "ET": 3}


@dataclass
class SyntheticCase:
    """One generated subject on the MNI152 grid of its resolution (RAS, arrays ``[x, y, z]``).

    ``images``: ``{modality: float32 (X, Y, Z)}`` in MODALITIES order, skull-stripped (0 outside the
    brain), arbitrary scanner units. ``label``: uint8 ``(X, Y, Z)`` with BraTS-2023 values
    (0 background, 1 NCR, 2 SNFH, 3 ET). ``affine``: (4, 4) voxel -> MNI mm.
    """

    images: dict[str, np.ndarray]
    label: np.ndarray
    affine: np.ndarray
    case_id: str
    cohort: str = ""
    seed: int = 0
    resolution: int = 2
    info: dict[str, Any] = field(default_factory=dict)

    def stacked(self) -> np.ndarray:
        """The images as one float32 ``(4, X, Y, Z)`` array in MODALITIES order."""
        return np.stack([self.images[m] for m in MODALITIES])


def case_seed(seed: int, index: int, cohort: str) -> int:
    """The seed of case ``index`` of ``cohort`` in a cohort drawn with ``seed`` (stable across runs
    and platforms: the cohort name enters through CRC-32, not Python's salted ``hash``)."""
    ss = np.random.SeedSequence([int(seed), int(index), zlib.crc32(cohort.encode("utf-8"))])
    return int(ss.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def case_id_for(cohort: str, seed: int, index: int) -> str:
    """``SYN-<COHORT>-s<seed>-<index:04d>``, e.g. ``SYN-ADULT-s0-0003``."""
    return f"SYN-{cohort.upper()}-s{seed}-{index:04d}"


def generate_case(
    params: CohortParams, seed: int, resolution: int = 2, *, case_id: str | None = None
) -> SyntheticCase:
    """Draw one subject of the cohort ``params`` deterministically from ``seed``.

    ``resolution``: output grid spacing in mm, 1 (197x233x189 voxels) or 2 (99x117x95).
    """
    tpl = load_templates(resolution)
    rng = np.random.default_rng(seed)
    scale = float(rng.uniform(*params.head_scale))
    anat = deform_anatomy(tpl, rng, scale, params.deform_mm)
    lesion = make_lesion(anat, tpl, params, rng) if params.has_lesion else None
    table = subject_table(params, rng)
    gain = np.asarray(params.gain) * rng.uniform(1 - params.gain_jitter, 1 + params.gain_jitter, 4)

    work = compose(anat, table, lesion)
    apply_bias(work, anat, tpl.mask.shape, params.bias_strength, rng)
    if params.slice_thickness_mm is not None:
        apply_thick_slices(work, anat.box[2].start, resolution, params.slice_thickness_mm, rng)
    work = add_noise_and_gain(work, anat.mask, params.snr, gain, rng)

    shape = tpl.mask.shape
    images = {}
    for m, name in enumerate(MODALITIES):
        full = np.zeros(shape, dtype=np.float32)
        full[anat.box] = work[m]
        images[name] = full
    label = np.zeros(shape, dtype=np.uint8)
    info: dict[str, Any] = {"head_scale": round(scale, 4), "gain": [round(float(g), 2) for g in gain]}
    if lesion is not None:
        full_box = tuple(
            slice(w.start + s.start, w.start + s.stop) for w, s in zip(anat.box, lesion.box, strict=True)
        )
        label[full_box] = lesion.label
        info["lesion"] = lesion.info
    return SyntheticCase(
        images=images,
        label=label,
        affine=tpl.affine.copy(),
        case_id=case_id or f"SYN-{params.name.upper()}-{seed}",
        cohort=params.name,
        seed=int(seed),
        resolution=resolution,
        info=info,
    )


def _nifti(arr: np.ndarray, affine: np.ndarray) -> nib.Nifti1Image:
    img = nib.Nifti1Image(arr, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    return img


def write_case(case: SyntheticCase, out_dir: str | Path) -> Path:
    """Write ``out_dir/<case_id>/<case_id>-{t1n,t1c,t2w,t2f,seg}.nii.gz``; returns the case folder.

    Images float32, seg uint8, all with the template's affine; gzip level 1 (nibabel's default).
    """
    folder = Path(out_dir) / case.case_id
    folder.mkdir(parents=True, exist_ok=True)
    for name in MODALITIES:
        nib.save(_nifti(case.images[name], case.affine), folder / f"{case.case_id}-{name}.nii.gz")
    nib.save(_nifti(case.label, case.affine), folder / f"{case.case_id}-seg.nii.gz")
    return folder


def write_cohort(
    out_dir: str | Path,
    cohort: str | CohortParams,
    n: int,
    seed: int = 0,
    resolution: int = 2,
    overrides: Mapping[str, Any] | None = None,
    progress: Callable[[dict[str, Any]], None] | None = None,
) -> list[Path]:
    """Generate ``n`` cases of ``cohort`` (a preset name or parameters) and write them as BraTS-2023
    folders under ``out_dir``, plus ``out_dir/dataset.json`` (channel names, labels, cohort, every
    parameter, case ids, per-case seeds and lesion draws). Returns the case folders in order.

    Case ``i`` uses the seed ``case_seed(seed, i, cohort_name)``, so a cohort is reproducible and
    its first cases do not change when ``n`` grows. ``progress`` receives ``{"done", "total", "case_id"}``.
    """
    params = get_cohort(cohort, overrides) if isinstance(cohort, str) else apply_overrides(cohort, overrides)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    folders: list[Path] = []
    cases: list[dict[str, Any]] = []
    for i in range(n):
        cid = case_id_for(params.name, seed, i)
        s = case_seed(seed, i, params.name)
        case = generate_case(params, s, resolution, case_id=cid)
        folders.append(write_case(case, out))
        cases.append({"case_id": cid, "seed": s, **case.info})
        if progress is not None:
            progress({"done": i + 1, "total": n, "case_id": cid})
    meta = {
        "name": f"medseglens-synthetic-{params.name}",
        "generator": "medseglens_core.data.synthetic",
        "cohort": params.name,
        "description": params.description,
        "channel_names": {str(i): m for i, m in enumerate(MODALITIES)},
        "modalities": list(MODALITIES),
        "labels": LABELS,
        "regions": {"WT": [1, 2, 3], "TC": [1, 3], "ET": [3]},
        "file_ending": ".nii.gz",
        "file_pattern": "<case_id>/<case_id>-{t1n,t1c,t2w,t2f,seg}.nii.gz",
        "resolution_mm": resolution,
        "seed": seed,
        "numCases": n,
        "params": params.to_dict(),
        "case_ids": [c["case_id"] for c in cases],
        "cases": cases,
    }
    (out / "dataset.json").write_text(json.dumps(meta, indent=2))
    return folders
