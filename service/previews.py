"""PNG previews (matplotlib Agg, no pyplot: safe in worker threads)."""

from __future__ import annotations

import io

import numpy as np

MODALITY_TITLES = ("T1n", "T1c", "T2w", "T2-FLAIR")
LABEL_COLOURS = {1: "#e41a1c", 2: "#4daf4a", 3: "#377eb8"}  # NCR red, SNFH green, ET blue


def preview_slice(image: np.ndarray, label: np.ndarray | None) -> int:
    """Axial slice index to show: the one with the most tumour voxels, else the middle slice.

    ``image`` is ``(4, X, Y, Z)``; ``label`` is ``(X, Y, Z)`` or None.
    """
    if label is not None and label.any():
        return int(np.argmax((label > 0).sum(axis=(0, 1))))
    return image.shape[-1] // 2


def _window(slice_xy: np.ndarray) -> np.ndarray:
    finite = slice_xy[np.isfinite(slice_xy)]
    if finite.size == 0:
        return np.zeros_like(slice_xy, dtype=np.float32)
    lo, hi = np.percentile(finite, [1, 99])
    scale = hi - lo if hi > lo else 1.0
    return np.clip((slice_xy - lo) / scale, 0.0, 1.0)


def render_case_preview(
    image: np.ndarray, label: np.ndarray | None, z: int | None = None, dpi: int = 80
) -> bytes:
    """PNG bytes: the four modalities of axial slice ``z`` side by side, label outlines on top.

    Arrays are RAS ``[x, y, z]``; each panel shows x to the right and y (anterior) up.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    z = preview_slice(image, label) if z is None else z
    fig = Figure(figsize=(12, 3.4), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, image.shape[0])
    for c, ax in enumerate(np.atleast_1d(axes)):
        ax.imshow(_window(image[c, :, :, z]).T, cmap="gray", origin="lower", interpolation="nearest")
        if label is not None:
            lab = label[:, :, z].T
            for value, colour in LABEL_COLOURS.items():
                if (lab == value).any():
                    ax.contour(lab == value, levels=[0.5], colors=[colour], linewidths=0.8)
        title = MODALITY_TITLES[c] if c < len(MODALITY_TITLES) else f"channel {c}"
        ax.set_title(f"{title}  z={z}", fontsize=9)
        ax.set_axis_off()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
