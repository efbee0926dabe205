"""The one figure style shared by every chapter."""

from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt
import seaborn as sns

PALETTE = "colorblind"
DENSITY_CMAP = "magma"
SCORE_CMAP = "viridis"
DIVERGING_CMAP = "vlag"


def use_style() -> None:
    """Apply the book's style: white grid, colour-blind palette, readable sizes, crisp PNGs."""
    sns.set_theme(context="notebook", style="whitegrid", palette=PALETTE)
    mpl.rcParams.update(
        {
            "figure.dpi": 110,
            "savefig.dpi": 150,
            "savefig.bbox": "tight",
            "axes.titlesize": 11,
            "axes.labelsize": 10,
            "legend.fontsize": 9,
            "legend.frameon": False,
            "image.cmap": SCORE_CMAP,
        }
    )


def figure(ncols: int = 1, nrows: int = 1, *, width: float = 4.0, height: float = 3.2, **kwargs):
    """A (fig, axes) grid with panels of the given size in inches; axes squeezed like plt.subplots."""
    use_style()
    return plt.subplots(
        nrows, ncols, figsize=(width * ncols, height * nrows), constrained_layout=True, **kwargs
    )


def label_panels(axes, *, start: str = "a") -> None:
    """Write (a), (b), ... in the top-left corner of each panel."""
    for i, ax in enumerate(getattr(axes, "flat", [axes])):
        ax.text(
            -0.02, 1.02, f"({chr(ord(start) + i)})", transform=ax.transAxes, ha="right",
            va="bottom", fontweight="bold",
        )  # fmt: skip


def image_strip(ax, images, *, title: str = "", captions=None, cmap: str = "gray") -> None:
    """Draw images (n, H, W) or (n, H, W, 3) side by side in one axis, with optional captions."""
    import numpy as np

    images = np.asarray(images)
    if images.ndim not in (3, 4):
        raise ValueError(f"images: expected (n, H, W) or (n, H, W, 3), got shape {images.shape}")
    gap = np.ones((images.shape[1], 2, *images.shape[3:]), dtype=images.dtype) * images.max()
    row = np.concatenate([part for image in images for part in (image, gap)][:-1], axis=1)
    ax.imshow(row, cmap=cmap, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    ax.set_title(title, fontsize=9)
    if captions is not None:
        width = images.shape[2] + 2
        for i, caption in enumerate(captions):
            ax.text(i * width + images.shape[2] / 2, images.shape[1] + 1, caption, ha="center",
                    va="top", fontsize=7)  # fmt: skip
