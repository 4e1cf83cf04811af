"""Report figures as PNG bytes (matplotlib, Agg backend; nothing is shown or written unless asked).

Axial slices are arrays ``[x, y]`` on the RAS grid; they are drawn with ``x`` to the right and
``y`` (anterior) up (``imshow(a.T, origin="lower")``).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def to_png(fig: plt.Figure, dpi: int = 100) -> bytes:
    """Render ``fig`` to PNG bytes and close it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def heatmap_png(
    matrix: np.ndarray,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    title: str,
    cbar_label: str = "firing rate",
) -> bytes:
    """Heatmap of ``matrix (rows, cols)``, e.g. cohort x latent firing rate."""
    m = np.asarray(matrix, dtype=float)
    fig, ax = plt.subplots(figsize=(min(2 + 0.2 * m.shape[1], 13), 1.5 + 0.45 * m.shape[0]))
    im = ax.imshow(m, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_yticks(range(len(row_labels)), list(row_labels))
    step = max(1, len(col_labels) // 60)
    ax.set_xticks(
        range(0, len(col_labels), step), [str(c) for c in col_labels][::step], rotation=90, fontsize=7
    )
    ax.set_xlabel("latent")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label=cbar_label, fraction=0.03)
    return to_png(fig)


def volcano_png(
    effect: np.ndarray,
    q: np.ndarray,
    specific: np.ndarray,
    title: str,
    alpha: float = 0.05,
    labels: Sequence[int] | None = None,
) -> bytes:
    """Volcano plot: effect size (rank-biserial) vs ``-log10 q``; specific latents in red."""
    effect = np.asarray(effect, dtype=float)
    y = -np.log10(np.clip(np.asarray(q, dtype=float), 1e-300, 1.0))
    spec = np.asarray(specific, dtype=bool)
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(effect[~spec], y[~spec], s=8, c="0.6", label="not specific")
    ax.scatter(effect[spec], y[spec], s=14, c="tab:red", label="population-specific")
    ax.axhline(-np.log10(alpha), ls="--", c="k", lw=0.8)
    if labels is not None:
        top = np.flatnonzero(spec)
        for j in top[np.argsort(-y[top], kind="stable")][:5]:
            ax.annotate(
                str(labels[j]), (effect[j], y[j]), fontsize=7, xytext=(3, 2), textcoords="offset points"
            )
    ax.set_xlabel("effect (rank-biserial, + = more in target)")
    ax.set_ylabel("-log10 q (BH)")
    ax.set_xlim(-1.05, 1.05)
    ax.set_title(title)
    ax.set_ylim(bottom=0, top=max(float(y.max(initial=0)), -np.log10(alpha)) * 1.1 + 0.1)
    ax.legend(fontsize=7, loc="upper center", framealpha=0.8)  # a volcano leaves the top centre empty
    return to_png(fig)


def overlay_png(
    background: np.ndarray, overlay: np.ndarray, title: str = "", threshold: float = 0.0
) -> bytes:
    """An axial slice ``background [x, y]`` in grey with ``overlay [x, y]`` (values > threshold) on top."""
    bg = np.asarray(background, dtype=float)
    ov = np.ma.masked_less_equal(np.asarray(overlay, dtype=float), threshold)
    fig, ax = plt.subplots(figsize=(3.2, 3.2))
    ax.imshow(bg.T, origin="lower", cmap="gray")
    im = ax.imshow(ov.T, origin="lower", cmap="hot", alpha=0.6)
    ax.set_axis_off()
    ax.set_title(title, fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return to_png(fig)


def grid_png(panels: Sequence[tuple[np.ndarray, np.ndarray]], titles: Sequence[str], ncols: int = 4) -> bytes:
    """A grid of ``(background [x, y], overlay [x, y])`` panels, e.g. a latent's top examples."""
    n = max(len(panels), 1)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.2 * ncols, 2.2 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, (bg, ov), title in zip(axes.flat, panels, titles, strict=False):
        ax.imshow(np.asarray(bg, dtype=float).T, origin="lower", cmap="gray")
        ax.imshow(
            np.ma.masked_less_equal(np.asarray(ov, dtype=float), 0).T, origin="lower", cmap="hot", alpha=0.6
        )
        ax.set_title(title, fontsize=7)
    return to_png(fig)
