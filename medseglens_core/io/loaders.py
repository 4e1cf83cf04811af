"""Case loaders: BraTS 2023 / 2021 folders, one 4-D NIfTI, and in-memory files.

Every loader reads each file through :func:`medseglens_core.io.nifti.read_nifti` (size, gzip,
header and voxel-count checks before allocation), checks that all modalities and the label
map share one grid (same shape; affines equal within ``IOLimits.affine_tolerance``), and
reorients everything to RAS canonical with the orientation of the first modality (``t1n``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from medseglens_core.io.case import MODALITIES, Case, Geometry, IOLimits
from medseglens_core.io.errors import (
    AffineMismatch,
    CaseNotFound,
    IncompleteCase,
    InvalidLabelValues,
    InvalidModalityOrder,
    ModalityShapeMismatch,
)
from medseglens_core.io.nifti import NiftiVolume, check_finite_voxels, read_nifti, source_label

__all__ = ["LAYOUTS", "find_cases", "load_case", "load_case_4d", "load_case_from_files"]

#: File-name suffixes (before ``.nii.gz`` / ``.nii``) per layout, keyed by role.
LAYOUTS: dict[str, dict[str, str]] = {
    "brats2023": {"t1n": "-t1n", "t1c": "-t1c", "t2w": "-t2w", "t2f": "-t2f", "seg": "-seg"},
    "brats2021": {"t1n": "_t1", "t1c": "_t1ce", "t2w": "_t2", "t2f": "_flair", "seg": "_seg"},
}
#: Highest label value accepted per layout before remapping (BraTS 2021 uses 4 for ET).
_LABEL_MAX = {"brats2023": 3, "brats2021": 4}
_EXTS = (".nii.gz", ".nii")
_ALIASES = {
    "t1n": "t1n", "t1": "t1n", "t1w": "t1n", "t1native": "t1n",
    "t1c": "t1c", "t1ce": "t1c", "t1gd": "t1c", "t1post": "t1c",
    "t2w": "t2w", "t2": "t2w",
    "t2f": "t2f", "flair": "t2f", "t2flair": "t2f", "t2-flair": "t2f",
}  # fmt: skip


def load_case(path: Path | str, *, limits: IOLimits = IOLimits(), cohort: str | None = None) -> Case:
    """Load a BraTS 2023 (``<id>-t1n.nii.gz`` ...) or BraTS 2021 (``<id>_t1.nii.gz`` ...) folder.

    The layout is detected from the file names; ``-seg`` / ``_seg`` is optional. BraTS 2021
    labels (0, 1, 2, 4) are remapped to the 2023 convention (4 -> 3).

    Returns:
        :class:`Case` with ``image`` (4, X, Y, Z) float32 RAS in :data:`MODALITIES` order.

    Raises:
        CaseNotFound: ``path`` does not exist.
        IncompleteCase: no complete, unambiguous set of the four modalities in the folder.
        and every error of :func:`read_nifti` and of the grid/label checks.
    """
    folder = Path(path)
    if not folder.exists():
        raise CaseNotFound(f"Case folder '{folder.name}' does not exist; check the path.")
    if not folder.is_dir():
        raise IncompleteCase(
            f"'{folder.name}' is a file, not a case folder; use load_case_4d for one 4-D NIfTI."
        )
    layout, case_id, files = _detect(folder)
    volumes = {m: read_nifti(files[m], name=m, limits=limits) for m in MODALITIES}
    seg = None
    if "seg" in files:
        seg = read_nifti(files["seg"], name="seg", limits=limits, as_float=False)
    provenance = {"format": layout, "files": {role: p.name for role, p in files.items()}}
    return _assemble(
        case_id,
        [(m, source_label(files[m], m), volumes[m], volumes[m].data) for m in MODALITIES],
        seg=(source_label(files["seg"], "seg"), seg) if seg is not None else None,
        label_max=_LABEL_MAX[layout],
        limits=limits,
        cohort=cohort,
        provenance=provenance,
    )


def load_case_4d(
    path: Path | str | bytes,
    modality_order: Sequence[str],
    *,
    label: Path | str | bytes | None = None,
    limits: IOLimits = IOLimits(),
    cohort: str | None = None,
    case_id: str | None = None,
) -> Case:
    """Load one 4-D NIfTI ``(I, J, K, 4)`` whose 4th axis holds the modalities in ``modality_order``.

    Args:
        path: the 4-D file (path or bytes).
        modality_order: four names, one per volume along the 4th axis, a permutation of
            :data:`MODALITIES`; aliases ``t1``, ``t1ce``/``t1gd``, ``t2``, ``flair`` are accepted.
        label: optional 3-D label map on the same grid (values in {0, 1, 2, 3}).
        case_id: defaults to the file name without ``.nii[.gz]`` (``"case"`` for bytes).
    """
    order = normalise_modality_order(modality_order)
    is_bytes = isinstance(path, bytes | bytearray | memoryview)
    case_id = case_id or ("case" if is_bytes else _strip_ext(Path(path).name))
    vol = read_nifti(path, name="image", limits=limits, ndim=4, channels=len(order), check_finite=False)
    image_label = source_label(path, "image")
    channels = []
    for m in MODALITIES:
        name = f"{m} ({image_label}, volume {order.index(m)})"
        data = vol.data[..., order.index(m)]
        check_finite_voxels(data, name)
        channels.append((m, name, vol, data))
    seg = None
    if label is not None:
        seg = (source_label(label, "seg"), read_nifti(label, name="seg", limits=limits, as_float=False))
    provenance = {
        "format": "nifti4d",
        "files": {"image": "<bytes>" if is_bytes else Path(path).name}
        | ({"seg": _display_name(label)} if label is not None else {}),
        "modality_order": list(order),
    }
    return _assemble(
        case_id, channels, seg=seg, label_max=3, limits=limits, cohort=cohort, provenance=provenance
    )


def load_case_from_files(
    files: Mapping[str, bytes | Path | str],
    *,
    label: bytes | Path | str | None = None,
    modality_order: Sequence[str] | None = None,
    case_id: str = "case",
    limits: IOLimits = IOLimits(),
    cohort: str | None = None,
) -> Case:
    """Load a case from in-memory files (uploads) or paths.

    Args:
        files: either the four keys ``t1n, t1c, t2w, t2f`` (aliases accepted), each a 3-D
            NIfTI, or the single key ``"image"`` holding a 4-D NIfTI (then ``modality_order``
            is required).
        label: optional label map (values in {0, 1, 2, 3}).

    Raises:
        InvalidModalityOrder: the keys are neither the four modalities nor ``"image"``.
    """
    if set(files) == {"image"}:
        if modality_order is None:
            raise InvalidModalityOrder(
                "A 4-D 'image' upload needs modality_order, e.g. ['t1n','t1c','t2w','t2f']."
            )
        return load_case_4d(
            files["image"], modality_order, label=label, limits=limits, cohort=cohort, case_id=case_id
        )
    keys = {_canonical_modality(k): k for k in files}
    if len(keys) != len(files) or set(keys) != set(MODALITIES):
        raise InvalidModalityOrder(
            f"Upload keys {sorted(files)} do not name the four modalities; send exactly "
            f"{list(MODALITIES)} (3-D files) or 'image' (one 4-D file)."
        )
    volumes = {m: read_nifti(files[keys[m]], name=m, limits=limits) for m in MODALITIES}
    seg = None
    if label is not None:
        seg = (source_label(label, "seg"), read_nifti(label, name="seg", limits=limits, as_float=False))
    provenance = {
        "format": "files",
        "files": {m: _display_name(files[keys[m]]) for m in MODALITIES}
        | ({"seg": _display_name(label)} if label is not None else {}),
    }
    channels = [(m, source_label(files[keys[m]], m), volumes[m], volumes[m].data) for m in MODALITIES]
    return _assemble(
        case_id, channels, seg=seg, label_max=3, limits=limits, cohort=cohort, provenance=provenance
    )


def find_cases(root: Path | str) -> list[Path]:
    """Case folders under ``root`` (recursive, ``root`` included), sorted by path.

    A folder counts when it holds one complete BraTS 2023 or 2021 set of the four modalities.
    Folders that do not qualify are skipped silently.

    Raises:
        CaseNotFound: ``root`` is not a directory.
    """
    root = Path(root)
    if not root.is_dir():
        raise CaseNotFound(f"'{root.name}' is not a directory; pass the folder that holds the cases.")
    found = []
    for dirpath, dirnames, _ in os.walk(root):
        dirnames.sort()
        try:
            _detect(Path(dirpath))
        except IncompleteCase:
            continue
        found.append(Path(dirpath))
    return sorted(found)


def normalise_modality_order(order: Sequence[str]) -> list[str]:
    """Map a declared modality order to canonical names; it must be a permutation of MODALITIES."""
    if isinstance(order, str):
        order = [s.strip() for s in order.split(",")]
    names = [_canonical_modality(str(o)) for o in order]
    if sorted(n for n in names if n) != sorted(MODALITIES) or len(names) != len(MODALITIES):
        raise InvalidModalityOrder(
            f"modality_order {list(order)} must name each of {list(MODALITIES)} exactly once "
            "(aliases t1, t1ce, t2, flair accepted)."
        )
    return names  # type: ignore[return-value]


def _canonical_modality(name: str) -> str | None:
    return _ALIASES.get(name.strip().lower().replace("_", ""))


def _strip_ext(name: str) -> str:
    for ext in _EXTS:
        if name.lower().endswith(ext):
            return name[: -len(ext)]
    return name


def _display_name(src: bytes | Path | str | None) -> str:
    return "<bytes>" if isinstance(src, bytes | bytearray | memoryview) else Path(str(src)).name


def _scan(folder: Path) -> dict[str, dict[str, list[tuple[str, Path]]]]:
    """Per layout and role, the (case prefix, path) pairs whose names match in ``folder``."""
    hits: dict[str, dict[str, list[tuple[str, Path]]]] = {lay: {} for lay in LAYOUTS}
    for entry in sorted(folder.iterdir()):
        stem = _strip_ext(entry.name)
        if stem == entry.name or not entry.is_file():
            continue
        for layout, suffixes in LAYOUTS.items():
            for role, suffix in suffixes.items():
                if stem.endswith(suffix) and len(stem) > len(suffix):
                    hits[layout].setdefault(role, []).append((stem[: -len(suffix)], entry))
    return hits


def _detect(folder: Path) -> tuple[str, str, dict[str, Path]]:
    """(layout, case id, role -> path) of the one complete case in ``folder``."""
    hits = _scan(folder)
    complete = [lay for lay in LAYOUTS if all(m in hits[lay] for m in MODALITIES)]
    if not complete:
        best = max(LAYOUTS, key=lambda lay: sum(m in hits[lay] for m in MODALITIES))
        missing = [m for m in MODALITIES if m not in hits[best]]
        example = ", ".join(f"<id>{LAYOUTS[best][m]}.nii.gz" for m in missing)
        raise IncompleteCase(
            f"Folder '{folder.name}' holds no complete BraTS case: missing {missing} (expected {example})."
        )
    if len(complete) > 1:
        raise IncompleteCase(
            f"Folder '{folder.name}' mixes BraTS 2023 and 2021 file names; keep one case per folder."
        )
    layout = complete[0]
    roles = hits[layout]
    prefixes = {p for m in MODALITIES for p, _ in roles[m]}
    if len(prefixes) != 1 or any(len(roles[m]) != 1 for m in MODALITIES):
        raise IncompleteCase(
            f"Folder '{folder.name}' holds several cases ({len(prefixes)} ids); keep one case per folder."
        )
    (case_id,) = prefixes
    files = {m: roles[m][0][1] for m in MODALITIES}
    segs = [p for prefix, p in roles.get("seg", []) if prefix == case_id]
    if len(segs) > 1:
        raise IncompleteCase(f"Folder '{folder.name}' holds several label maps for '{case_id}'; keep one.")
    if segs:
        files["seg"] = segs[0]
    return layout, case_id, files


def _check_same_grid(
    ref_name: str, ref: NiftiVolume, ref_shape: tuple[int, ...], name: str, vol: NiftiVolume,
    shape: tuple[int, ...], tol: float,
) -> None:  # fmt: skip
    if tuple(shape[:3]) != tuple(ref_shape[:3]):
        raise ModalityShapeMismatch(
            f"{name} has grid shape {tuple(shape[:3])} but {ref_name} has {tuple(ref_shape[:3])}; "
            "resample all modalities (and the label map) to one grid first."
        )
    diff = float(np.max(np.abs(vol.affine[:3] - ref.affine[:3])))
    if diff > tol:
        raise AffineMismatch(
            f"{name} and {ref_name} have different affines (largest difference {diff:.4g}, tolerance "
            f"{tol:g}); co-register and resample the modalities to one grid, or raise IOLimits.affine_tolerance."
        )


def _assemble(
    case_id: str,
    channels: list[tuple[str, str, NiftiVolume, np.ndarray]],
    *,
    seg: tuple[str, NiftiVolume] | None,
    label_max: int,
    limits: IOLimits,
    cohort: str | None,
    provenance: dict,
) -> Case:
    """Check one grid, reorient to RAS, stack. ``channels``: (modality, label, volume, data) in MODALITIES order."""
    _, ref_label, ref_vol, ref_data = channels[0]
    for _, lab, vol, data in channels[1:]:
        _check_same_grid(ref_label, ref_vol, ref_data.shape, lab, vol, data.shape, limits.affine_tolerance)
    geometry = Geometry.from_affine(ref_vol.affine, ref_data.shape[:3])
    # Channels Fortran-ordered like the NIfTI data: the reorienting copy then streams through
    # memory (about 5x faster than transposing into C order) and axial slices are contiguous.
    x, y, z = geometry.shape
    image = np.empty((len(channels), z, y, x), dtype=np.float32).transpose(0, 3, 2, 1)
    for i, (_, _, _, data) in enumerate(channels):
        # One copy straight into the stack (to_ras would copy twice).
        image[i] = nib.orientations.apply_orientation(data, geometry.ornt)
    label = None
    if seg is not None:
        seg_label, seg_vol = seg
        _check_same_grid(
            ref_label,
            ref_vol,
            ref_data.shape,
            seg_label,
            seg_vol,
            seg_vol.data.shape,
            limits.affine_tolerance,
        )
        label = geometry.to_ras(_label_values(seg_vol.data, seg_label, label_max))
    provenance = dict(provenance)
    provenance["orientation"] = "".join(nib.orientations.aff2axcodes(ref_vol.affine))
    provenance["dtypes"] = {m: vol.dtype for m, _, vol, _ in channels} | (
        {"seg": seg[1].dtype} if seg is not None else {}
    )
    provenance["label_remapped_4_to_3"] = bool(label_max == 4 and seg is not None)
    return Case(
        case_id=case_id, image=image, label=label, geometry=geometry, cohort=cohort, provenance=provenance
    )


def _label_values(data: np.ndarray, name: str, label_max: int) -> np.ndarray:
    """Validate label values (integers in 0..label_max) and return uint8 with 4 -> 3."""
    if data.dtype.kind == "f":
        bad = ~np.isfinite(data) | (data != np.round(data)) | (data < 0) | (data > label_max)
    else:
        bad = (data < 0) | (data > label_max)
    if bad.any():
        values = np.unique(data[bad])
        shown = ", ".join(f"{v:g}" for v in values[:5].astype(np.float64)) + (
            " ..." if values.size > 5 else ""
        )
        allowed = "{0, 1, 2, 3, 4} (BraTS 2021, 4 = ET)" if label_max == 4 else "{0, 1, 2, 3}"
        raise InvalidLabelValues(
            f"{name}: {int(bad.sum())} voxels hold label values outside {allowed} ({shown}); "
            "use the BraTS convention 0 background, 1 NCR, 2 SNFH, 3 ET."
        )
    out = data.astype(np.uint8)
    if label_max == 4:
        out[out == 4] = 3
    return out
