"""Benchmark: loading a four-series DICOM MR study vs the same case as NIfTI (issue 13 target: <= 2x).

One case of ``--shape`` (default 240 x 240 x 155, 1 mm, the BraTS grid) is written twice: as four
``.nii.gz`` files (BraTS names) and, with ``medseglens_core.io.dicom.write_study`` (what
``medseglens dicom from-nifti`` does), as one study of four MR series (one uint16 file per slice,
4 x 155 files). Then, back to back and alternating which goes first, ``--repeats`` times:

- ``nifti_s``: ``medseglens_core.io.load_case(folder)`` -> the (4, X, Y, Z) float32 image;
- ``dicom_s``: read the study's files, ``datasets_from_bytes`` + ``read_study`` (sort by position,
  geometry checks, rescale) and stack the four series -> the same (4, X, Y, Z) float32 image;
- ``dicom_upload_s`` (reported, not the target): what ``POST /v1/volumes/dicom`` does with a zip of
  the study before the database row: unzip + parse + read the study + write the four NIfTI files
  the volume is stored as + validate them with the service's loader. Its NIfTI counterpart
  ``nifti_upload_s`` is validating the four uploaded files with the same loader.

Both images are checked equal (up to the 16-bit quantisation of the DICOM intensities) and on the
same affine, so the timings compare the same work. Prints JSON::

    {"shape": [...], "files": {"nifti": 4, "dicom": 620}, "bytes": {...},
     "nifti_s": s, "dicom_s": s, "ratio": dicom_s / nifti_s,
     "nifti_upload_s": s, "dicom_upload_s": s, "upload_ratio": r,
     "target_ratio": 2.0, "meets_target": bool, "runs": {...}, "load_average": [...], "cpu_count": n}

(medians over the repeats). Usage: ``python benchmarks/dicom_load.py [--repeats 5] [--shape 240 240 155]``
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

MODALITIES = ("t1n", "t1c", "t2w", "t2f")
TARGET_RATIO = 2.0


def make_case(shape: tuple[int, int, int], seed: int = 0) -> dict[str, np.ndarray]:
    """Four smooth, brain-like float32 volumes (a bright ellipsoid with a planted lesion)."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, n, dtype=np.float32) for n in shape], indexing="ij")
    r = np.sqrt(sum(g**2 for g in grids))
    brain = (r < 0.85).astype(np.float32)
    lesion = (np.sqrt((grids[0] - 0.3) ** 2 + grids[1] ** 2 + grids[2] ** 2) < 0.2).astype(np.float32)
    return {
        m: (brain * (400 + 150 * i) + lesion * 300 + rng.normal(0, 20, shape).astype(np.float32)).astype(
            np.float32
        )
        for i, m in enumerate(MODALITIES)
    }


def write_both(case: dict[str, np.ndarray], affine: np.ndarray, tmp: Path) -> tuple[Path, Path]:
    import nibabel as nib

    from medseglens_core.io.dicom import write_study

    nii = tmp / "nifti" / "BENCH-0001"
    nii.mkdir(parents=True)
    for m, a in case.items():
        nib.Nifti1Image(a, affine).to_filename(nii / f"BENCH-0001-{m}.nii.gz")
    dcm = tmp / "dicom"
    write_study({m: (a, affine) for m, a in case.items()}, dcm, case_id="BENCH-0001")
    return nii, dcm


def load_nifti(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    from medseglens_core.io import load_case

    case = load_case(folder)
    return case.image, case.affine


def load_dicom(files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    from medseglens_core.io.dicom import datasets_from_bytes, read_study

    study = read_study(datasets_from_bytes((p.name, p.read_bytes()) for p in files))
    image = np.stack([study.series[m].data for m in MODALITIES])
    return image, study.affine


def upload_nifti(folder: Path) -> None:
    from service.cases import load_case

    load_case({m: next(folder.glob(f"*-{m}.nii.gz")) for m in MODALITIES}, None, "bench")


def upload_dicom(zip_path: Path, stage_root: Path) -> None:
    """``POST /v1/volumes/dicom`` minus HTTP and the database: zip -> staged NIfTI -> validated."""
    from service.cases import load_case
    from service.dicom import load_upload_datasets, study_to_stage

    stage = Path(tempfile.mkdtemp(dir=stage_root))
    part = stage / "part-000000.bin"
    part.write_bytes(zip_path.read_bytes())
    datasets = load_upload_datasets([part], 2**34)
    _, paths = study_to_stage(datasets, None, stage, max_voxels=2**31)
    load_case(paths, None, "bench")


def _timed(fn, *args) -> float:
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--shape", type=int, nargs=3, default=[240, 240, 155])
    args = ap.parse_args()
    shape = tuple(args.shape)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = [-120.0, -120.0, -77.0]
    with tempfile.TemporaryDirectory(prefix="msl-dicom-bench-") as tmp_s:
        tmp = Path(tmp_s)
        case = make_case(shape)
        nii, dcm = write_both(case, affine, tmp)
        files = sorted(dcm.rglob("*.dcm"))
        zip_path = tmp / "study.zip"
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as zf:
            for p in files:
                zf.write(p, p.relative_to(dcm).as_posix())
        zip_path.write_bytes(buf.getvalue())

        # same image, same affine (DICOM stores uint16 with a per-series slope)
        a, aff_n = load_nifti(nii)
        b, aff_d = load_dicom(files)
        assert a.shape == b.shape, (a.shape, b.shape)
        assert np.allclose(aff_n, aff_d, atol=1e-4), (aff_n, aff_d)
        step = max(float(case[m].max() - case[m].min()) / 65535.0 for m in MODALITIES)
        max_err = float(np.abs(a - b).max())
        assert max_err <= 1.01 * step, (max_err, step)

        runs: dict[str, list[float]] = {k: [] for k in ("nifti", "dicom", "nifti_upload", "dicom_upload")}
        stage_root = tmp / "stage"
        stage_root.mkdir()
        for r in range(args.repeats):
            pairs = [("nifti", load_nifti, (nii,)), ("dicom", load_dicom, (files,))]
            for name, fn, fargs in pairs if r % 2 == 0 else pairs[::-1]:
                runs[name].append(_timed(fn, *fargs))
            ups = [
                ("nifti_upload", upload_nifti, (nii,)),
                ("dicom_upload", upload_dicom, (zip_path, stage_root)),
            ]
            for name, fn, fargs in ups if r % 2 == 0 else ups[::-1]:
                runs[name].append(_timed(fn, *fargs))
        med = {k: statistics.median(v) for k, v in runs.items()}
        ratio = med["dicom"] / med["nifti"]
        out = {
            "shape": list(shape),
            "files": {"nifti": 4, "dicom": len(files)},
            "bytes": {
                "nifti": sum(p.stat().st_size for p in nii.iterdir()),
                "dicom": sum(p.stat().st_size for p in files),
                "dicom_zip": zip_path.stat().st_size,
            },
            "nifti_s": round(med["nifti"], 3),
            "dicom_s": round(med["dicom"], 3),
            "ratio": round(ratio, 3),
            "nifti_upload_s": round(med["nifti_upload"], 3),
            "dicom_upload_s": round(med["dicom_upload"], 3),
            "upload_ratio": round(med["dicom_upload"] / med["nifti_upload"], 3),
            "target_ratio": TARGET_RATIO,
            "meets_target": ratio <= TARGET_RATIO,
            "max_abs_intensity_difference": max_err,
            "repeats": args.repeats,
            "runs": {k: [round(x, 3) for x in v] for k, v in runs.items()},
            "load_average": [round(x, 2) for x in os.getloadavg()],
            "cpu_count": os.cpu_count(),
        }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
