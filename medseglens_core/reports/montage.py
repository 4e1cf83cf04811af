"""A montage of BraTS-style cohorts: per cohort one row with the four modalities and the label
overlay on one axial slice through the tumour.

Input layout, either:
- ``DIR/<cohort>/dataset.json`` + ``DIR/<cohort>/<case_id>/...``: one row per cohort folder, or
- ``DIR/dataset.json`` + ``DIR/<case_id>/...``: one row.
Each row shows the most tumour-bearing of the cohort's first four cases.
Case folders hold BraTS-2023 files ``<case_id>-{t1n,t1c,t2w,t2f,seg}.nii.gz``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from medseglens_core.errors import NotFound

MODALITY_TITLES: dict[str, str] = {"t1n": "T1n", "t1c": "T1c", "t2w": "T2w", "t2f": "T2-FLAIR"}
#: Overlay colours (RGBA) per label: NCR red, SNFH green, ET yellow.
LABEL_COLOURS: dict[int, tuple[float, float, float, float]] = {
    1: (0.9, 0.1, 0.1, 0.75),
    2: (0.1, 0.85, 0.2, 0.55),
    3: (1.0, 0.9, 0.0, 0.8),
}


PRESET_ORDER: tuple[str, ...] = ("adult", "pediatric", "ssa", "healthy")


class NoCasesFound(NotFound):
    """A montage directory holding no BraTS-2023 case folder."""


@dataclass
class MontageRow:
    """One row: a cohort name, its case id, the axial slices ``{modality: (X, Y)}`` and ``label (X, Y)``."""

    cohort: str
    case_id: str
    z: int
    slices: dict[str, np.ndarray]
    label: np.ndarray


def _cohort_dirs(data_dir: Path) -> list[tuple[str, Path]]:
    if (data_dir / "dataset.json").is_file():
        meta = json.loads((data_dir / "dataset.json").read_text())
        return [(str(meta.get("cohort", data_dir.name)), data_dir)]
    rows = []
    for sub in sorted(p for p in data_dir.iterdir() if p.is_dir()):
        meta_path = sub / "dataset.json"
        if meta_path.is_file():
            rows.append((str(json.loads(meta_path.read_text()).get("cohort", sub.name)), sub))
    # Presets in their canonical order first, then any other cohort alphabetically.
    order = {name: i for i, name in enumerate(PRESET_ORDER)}
    return sorted(rows, key=lambda r: (order.get(r[0], len(order)), r[0]))


def _case_dirs(cohort_dir: Path) -> list[Path]:
    meta_path = cohort_dir / "dataset.json"
    ids = json.loads(meta_path.read_text()).get("case_ids", []) if meta_path.is_file() else []
    listed = [cohort_dir / cid for cid in ids if (cohort_dir / cid / f"{cid}-t1n.nii.gz").is_file()]
    if listed:
        return listed
    return [p for p in sorted(cohort_dir.iterdir()) if p.is_dir() and (p / f"{p.name}-t1n.nii.gz").is_file()]


def _pick_case(cohort_dir: Path, n_look: int = 4) -> Path:
    """Of the first ``n_look`` cases, the one with the most labelled (tumour) voxels; the first if none."""
    cases = _case_dirs(cohort_dir)
    if not cases:
        raise NoCasesFound(
            f"no case folder <id>/<id>-t1n.nii.gz under {cohort_dir}; write one with `medseglens synth`"
        )
    best, best_n = cases[0], 0
    for case in cases[:n_look]:
        seg = case / f"{case.name}-seg.nii.gz"
        n = int(np.count_nonzero(np.asarray(nib.load(seg).dataobj))) if seg.is_file() else 0
        if n > best_n:
            best, best_n = case, n
    return best


def load_row(cohort: str, case_dir: Path, modalities: tuple[str, ...] = tuple(MODALITY_TITLES)) -> MontageRow:
    """Read one case and cut the axial slice with the most tumour (label > 0), or, without tumour,
    the slice with the most brain."""
    cid = case_dir.name
    vols = {
        m: np.asarray(nib.load(case_dir / f"{cid}-{m}.nii.gz").dataobj, dtype=np.float32) for m in modalities
    }
    seg_path = case_dir / f"{cid}-seg.nii.gz"
    label = (
        np.asarray(nib.load(seg_path).dataobj).astype(np.uint8)
        if seg_path.is_file()
        else np.zeros(vols[modalities[0]].shape, dtype=np.uint8)
    )
    per_z = (label > 0).sum(axis=(0, 1))
    if per_z.max() == 0:
        per_z = (vols[modalities[0]] > 0).sum(axis=(0, 1))
    z = int(np.argmax(per_z))
    return MontageRow(cohort, cid, z, {m: v[:, :, z] for m, v in vols.items()}, label[:, :, z])


def collect_rows(data_dir: str | Path) -> list[MontageRow]:
    """One :class:`MontageRow` per cohort found under ``data_dir`` (layouts in the module docstring)."""
    root = Path(data_dir)
    if not root.is_dir():
        raise NoCasesFound(f"{root} is not a directory; pass the folder written by `medseglens synth`")
    dirs = _cohort_dirs(root)
    if not dirs:
        raise NoCasesFound(
            f"no dataset.json in {root} or its sub-folders; write cohorts with `medseglens synth`"
        )
    return [load_row(name, _pick_case(d)) for name, d in dirs]


def render_montage(rows: list[MontageRow], out_path: str | Path, *, dpi: int = 110) -> Path:
    """Draw the rows (columns: T1n, T1c, T2w, T2-FLAIR, labels over FLAIR) to a PNG at ``out_path``.

    Slices are shown with anterior up and the subject's right on the viewer's right (RAS arrays,
    ``[x, y]`` transposed, origin lower), cropped to the brain, grey window 0 to the 99.5th percentile.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    mods = list(MODALITY_TITLES)
    n_cols = len(mods) + 1
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(2.3 * n_cols, 2.6 * len(rows)), squeeze=False)
    fig.patch.set_facecolor("black")
    for r, row in enumerate(rows):
        brain = np.any([row.slices[m] > 0 for m in mods], axis=0) | (row.label > 0)
        xs, ys = np.nonzero(brain) if brain.any() else (np.arange(2), np.arange(2))
        crop = (slice(max(xs.min() - 3, 0), xs.max() + 4), slice(max(ys.min() - 3, 0), ys.max() + 4))
        for c, m in enumerate([*mods, "labels"]):
            ax = axes[r, c]
            src = row.slices["t2f" if m == "labels" else m][crop]
            vals = src[src > 0]
            hi = float(np.percentile(vals, 99.5)) if vals.size else 1.0
            ax.imshow(src.T, cmap="gray", vmin=0, vmax=hi, origin="lower", interpolation="nearest")
            if m == "labels":
                lab = row.label[crop]
                rgba = np.zeros((*lab.shape, 4), dtype=np.float32)
                for value, colour in LABEL_COLOURS.items():
                    rgba[lab == value] = colour
                ax.imshow(rgba.transpose(1, 0, 2), origin="lower", interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_facecolor("black")
            if r == 0:
                ax.set_title(MODALITY_TITLES.get(m, "labels on FLAIR"), color="white", fontsize=10)
            if c == 0:
                ax.set_ylabel(f"{row.cohort}\nz={row.z}", color="white", fontsize=10)
    handles = [Patch(color=LABEL_COLOURS[v][:3], label=n) for v, n in ((1, "NCR"), (2, "SNFH"), (3, "ET"))]
    fig.legend(handles=handles, loc="lower center", ncol=3, frameon=False, labelcolor="white", fontsize=9)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, facecolor=fig.get_facecolor())
    plt.close(fig)
    return out


def make_montage(data_dir: str | Path, out_path: str | Path) -> Path:
    """Collect one row per cohort under ``data_dir`` and render them to ``out_path`` (PNG)."""
    return render_montage(collect_rows(data_dir), out_path)
