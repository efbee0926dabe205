"""The singular-vectors chapter (the appendix figures): right-singular vectors of the encoder's
Jacobian as images, spectra, and how much of their energy falls on the object.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from matplotlib.ticker import NullFormatter
from torch import nn

from jepabook.datasets import ImageSet
from jepabook.jacobian import jacobian_rows
from jepabook.plots import DIVERGING_CMAP, figure
from jepabook.score import eval_mode, score_dataset


def singular_vectors(
    encoder: nn.Module, x: torch.Tensor, k: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values (min(K, D),) and top-k right-singular vectors (k, *x.shape[1:]) of J_f at x (1, ...).

    The right-singular vectors are the input directions the encoder stretches most; their signs are
    fixed so that each has a positive sum.
    """
    if x.shape[0] != 1:
        raise ValueError(f"x: expected one sample (1, ...), got a batch of {x.shape[0]}")
    with eval_mode(encoder), torch.enable_grad():
        K = encoder(x).shape[1]
        J = jacobian_rows(encoder, x, K)[0].detach().double()  # (K, D)
    _, sigma, vh = torch.linalg.svd(J, full_matrices=False)
    top = vh[:k] * torch.sign(vh[:k].sum(1, keepdim=True) + 1e-30)
    return sigma, top.reshape(k, *x.shape[1:]).float()


def support_fraction(
    vectors: torch.Tensor, image: torch.Tensor, threshold: float = 0.1
) -> np.ndarray:
    """Share of each vector's squared norm on the image's support (pixels above `threshold`).

    vectors: (k, 1, H, W) unit vectors; image: (1, H, W) pixels in [0, 1]. A vector spread
    uniformly over the image gives the support's share of pixels (returned by `support_share`).
    """
    support = (image > threshold).float()
    return (vectors.pow(2) * support).flatten(1).sum(1).numpy()


def support_share(image: torch.Tensor, threshold: float = 0.1) -> float:
    """Fraction of pixels of an image (1, H, W) above `threshold`: the chance level of support_fraction."""
    return float((image > threshold).float().mean())


def spectrum_figure(
    images: torch.Tensor, spectra: dict[str, list], vectors: dict[str, list], k: int = 6
):
    """Appendix-figure layout: per image, the image and its top-k right-singular vectors for each
    encoder (rows), and the singular-value spectra (last column, log scale)."""

    names = list(spectra)
    fig, axes = figure(k + 2, len(images) * len(names), width=1.15, height=1.15, squeeze=False)
    for i, image in enumerate(images):
        for j, name in enumerate(names):
            row = axes[i * len(names) + j]
            row[0].imshow(image[0], cmap="gray")
            row[0].set_title(name, fontsize=7, loc="left")
            for c in range(k):
                v = vectors[name][i][c, 0]
                row[c + 1].imshow(v, cmap=DIVERGING_CMAP, vmin=-abs(v).max(), vmax=abs(v).max())
                if i == 0 and j == 0:
                    row[c + 1].set_title(f"v{c + 1}", fontsize=8)
            row[-1].semilogy(spectra[name][i].numpy())
            row[-1].yaxis.set_minor_formatter(NullFormatter())  # no overlapping minor labels
            row[-1].tick_params(labelsize=6)
            for ax in row[:-1]:
                ax.set_axis_off()
    return fig


def spectrum_statistics(encoders: dict, images: ImageSet, k: int = 8) -> pd.DataFrame:
    """Per encoder and image: how the Jacobian's spectrum and top-k singular vectors look.

    Columns: score_error (relative gap between sum of log sigma and jepa_score), top8_energy (share
    of ||J||_F^2 = sum sigma^2 in the 8 largest singular values), condition (sigma_1 / sigma_min), on_support
    (mean energy of v_1..v_k on the image's support), support_share (its pixel share).
    """
    rows = []
    for name, trained in encoders.items():
        scores = score_dataset(trained.encoder, trained.inputs(images), progress=False)
        for image, score in zip(images.images, scores, strict=True):
            sigma, v = singular_vectors(trained.encoder, trained.inputs(image[None]), k)
            log_sigma = sigma.clamp(min=1e-6).log()
            rows.append(
                {
                    "encoder": name,
                    "score_error": abs(float(log_sigma.sum()) - score) / abs(score),
                    "top8_energy": float(sigma[:8].pow(2).sum() / sigma.pow(2).sum()),
                    "condition": float(sigma[0] / sigma[-1]),
                    "on_support": float(support_fraction(v, image).mean()),
                    "support_share": support_share(image),
                }
            )
    return pd.DataFrame(rows)
