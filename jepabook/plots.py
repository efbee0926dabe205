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
