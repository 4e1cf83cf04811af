"""DICOM SEG export of a BraTS label map (NCR=1, SNFH=2, ET=3) over its source MR series (highdicom).

The mask is on the source series' own grid (the ``[column, row, slice]`` voxel order of
:mod:`medseglens_core.io.dicom`), so frame ``k`` is ``mask[:, :, k].T`` over source slice ``k``: the
SEG's frames are the mask voxel for voxel, in the source's Frame of Reference.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from medseglens_core.errors import InvalidInput

__all__ = ["SEGMENTS", "build_seg", "seg_bytes", "seg_label_map"]

#: (number, label, SNOMED CT property type (code, meaning), recommended display colour RGB)
SEGMENTS: tuple[tuple[int, str, tuple[str, str], tuple[int, int, int]], ...] = (
    (1, "NCR (necrotic tumour core)", ("6574001", "Necrosis"), (255, 0, 0)),
    (2, "SNFH (oedema)", ("79654002", "Edema"), (0, 255, 0)),
    (3, "ET (enhancing tumour)", ("108369006", "Neoplasm"), (255, 255, 0)),
)
_CATEGORY = ("49755003", "Morphologically Altered Structure")


def _algorithm(model_id: str, sha256: str, spec_id: str | None) -> Any:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    params = {"weights_sha256": sha256}
    if spec_id:
        params["intervention_spec_id"] = spec_id
    return hd.AlgorithmIdentificationSequence(
        name=f"medseglens:{model_id}"[:64],
        family=codes.cid7162.ArtificialIntelligence,
        version=sha256[:64] or "unknown",
        source="Med-SegLens",
        parameters=params,
    )


def build_seg(
    source: Sequence[Any],
    mask: np.ndarray,
    *,
    model_id: str,
    weights_sha256: str,
    spec_id: str | None = None,
    segmentation_type: str = "binary",
    series_uid: str | None = None,
    sop_uid: str | None = None,
    software_version: str = "0",
) -> Any:
    """A highdicom ``Segmentation`` of ``mask`` (I, J, K labels 0..3) over ``source`` (sorted slices)."""
    import highdicom as hd
    from pydicom.sr.coding import Code
    from pydicom.uid import generate_uid

    mask = np.asarray(mask)
    rows, cols = int(source[0].Rows), int(source[0].Columns)
    if mask.shape != (cols, rows, len(source)):
        raise InvalidInput(
            f"The mask's grid {mask.shape} is not the source series' ({cols}, {rows}, {len(source)})."
        )
    if mask.size and (mask.min() < 0 or mask.max() > 3):
        raise InvalidInput("The mask must hold BraTS labels 0..3.")
    frames = np.ascontiguousarray(np.transpose(mask.astype(np.uint8), (2, 1, 0)))  # (K, rows, cols)
    algorithm = _algorithm(model_id, weights_sha256, spec_id)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=num,
            segment_label=label,
            segmented_property_category=Code(_CATEGORY[0], "SCT", _CATEGORY[1]),
            segmented_property_type=Code(code, "SCT", meaning),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*rgb)
            if hasattr(hd.color.CIELabColor, "from_rgb")
            else None,
        )
        for num, label, (code, meaning), rgb in SEGMENTS
    ]
    kind = segmentation_type.lower()
    if kind not in ("binary", "labelmap"):
        raise InvalidInput("type must be 'binary' or 'labelmap'.")
    seg_kind = (
        hd.seg.SegmentationTypeValues.LABELMAP if kind == "labelmap" else hd.seg.SegmentationTypeValues.BINARY
    )
    return hd.seg.Segmentation(
        source_images=list(source),
        pixel_array=frames,
        segmentation_type=seg_kind,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid or generate_uid(),
        series_number=100,
        sop_instance_uid=sop_uid or generate_uid(),
        instance_number=1,
        manufacturer="Med-SegLens",
        manufacturer_model_name=f"{model_id}"[:64],
        software_versions=software_version,
        device_serial_number="0",
        series_description=f"Med-SegLens {kind} SEG {model_id}"[:64],
        content_label="MEDSEGLENS",
        content_description="BraTS NCR/SNFH/ET",
        omit_empty_frames=kind == "binary",
    )


def seg_bytes(seg: Any) -> bytes:
    buf = io.BytesIO()
    seg.save_as(buf, enforce_file_format=True) if _has_enforce(seg) else seg.save_as(buf)
    return buf.getvalue()


def _has_enforce(seg: Any) -> bool:
    import inspect

    return "enforce_file_format" in inspect.signature(seg.save_as).parameters


def seg_label_map(seg: Any, source: Sequence[Any]) -> np.ndarray:
    """Read a SEG back (highdicom) as an (I, J, K) label map on ``source``'s grid."""
    import highdicom as hd

    if not isinstance(seg, hd.seg.Segmentation):
        seg = hd.seg.Segmentation.from_dataset(seg)
    uids = [str(d.SOPInstanceUID) for d in source]
    arr = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=uids,
        segment_numbers=[1, 2, 3],
        combine_segments=True,
        relabel=False,
        ignore_spatial_locations=True,
        assert_missing_frames_are_empty=True,
    )
    return np.transpose(np.asarray(arr), (2, 1, 0)).astype(np.uint8)
