"""PNG previews (matplotlib Agg, no pyplot: safe in worker threads)."""

from __future__ import annotations

import io

import numpy as np

MODALITY_TITLES = ("T1n", "T1c", "T2w", "T2-FLAIR")
LABEL_COLOURS = {1: "#e41a1c", 2: "#4daf4a", 3: "#377eb8"}  # NCR red, SNFH green, ET blue
LABEL_NAMES = {1: "NCR (necrotic core)", 2: "SNFH (oedema)", 3: "ET (enhancing tumour)"}


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
    image: np.ndarray,
    label: np.ndarray | None,
    z: int | None = None,
    dpi: int = 80,
    *,
    caption: str | None = None,
) -> bytes:
    """PNG bytes: the four modalities of axial slice ``z`` side by side, label outlines on top.

    Arrays are RAS ``[x, y, z]``; each panel shows x to the right and y (anterior) up. With a
    label map, a legend under the panels names the outline colours (NCR, SNFH, ET); ``caption``
    (e.g. what made the labels) heads the figure next to the slice index.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    z = preview_slice(image, label) if z is None else z
    fig = Figure(figsize=(12, 3.9), dpi=dpi)
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
        ax.set_title(title, fontsize=9)
        ax.set_axis_off()
    head = f"axial slice z={z} of {image.shape[-1]}"
    fig.suptitle(f"{caption}  |  {head}" if caption else head, fontsize=10)
    bottom = 0.0
    if label is not None:
        handles = [Patch(facecolor=c, edgecolor=c, label=LABEL_NAMES[v]) for v, c in LABEL_COLOURS.items()]
        fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
        bottom = 0.09
    fig.tight_layout(rect=(0.0, bottom, 1.0, 0.93))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
