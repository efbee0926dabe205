"""What the image chapters measure: JEPA-SCORE of image sets, extremes per class, agreement between
encoders, out-of-domain AUROC and the Jacobian's singular vectors.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import nn
from tqdm.auto import tqdm

from jepabook.datasets import ImageSet
from jepabook.score import jacobian_rows, jepa_score


def score_images(
    encoder: nn.Module, inputs: torch.Tensor, *, batch_size: int = 32, progress: bool = True
) -> np.ndarray:
    """JEPA-SCORE (N,) of encoder inputs (N, C, H, W), batch by batch with a progress bar."""
    starts = range(0, len(inputs), batch_size)
    parts = [
        jepa_score(encoder, inputs[i : i + batch_size]).cpu().numpy()
        for i in tqdm(starts, disable=not progress, desc="JEPA-SCORE", leave=False)
    ]
    return np.concatenate(parts) if parts else np.zeros(0)


def per_class(images: ImageSet, n: int, seed: int = 0) -> ImageSet:
    """A class-balanced random subset: n images of every class, in class order."""
    if images.labels is None:
        raise ValueError(f"images: {images.name} has no labels")
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in range(len(images.classes)):
        members = torch.nonzero(images.labels == label).squeeze(1)
        if len(members) < n:
            raise ValueError(f"n: class {label} has only {len(members)} images, asked for {n}")
        chosen.append(members[torch.randperm(len(members), generator=generator)[:n]])
    return images.subset(torch.cat(chosen))


def extremes(
    scores: np.ndarray, labels: np.ndarray, k: int = 5
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per class: indices of the k least likely (lowest score first) and the k most likely (highest first)."""
    result = {}
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        order = members[np.argsort(scores[members], kind="stable")]
        result[int(label)] = (order[:k], order[::-1][:k])
    return result


def tail_overlap(a: np.ndarray, b: np.ndarray, labels: np.ndarray, fraction: float = 0.1) -> float:
    """Mean over classes and over both tails of |A ∩ B| / |A|: A, B = each score's `fraction` tail.

    Two independent scores overlap by `fraction` on average (the chance level).
    """
    overlaps = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        m = max(1, int(round(fraction * len(members))))
        order_a, order_b = np.argsort(a[members]), np.argsort(b[members])
        for tail in (slice(None, m), slice(-m, None)):
            overlaps.append(len(np.intersect1d(order_a[tail], order_b[tail])) / m)
    return float(np.mean(overlaps))


def within_class_spearman(a: np.ndarray, b: np.ndarray, labels: np.ndarray) -> float:
    """Mean over classes of the Spearman correlation of two scores of the same images."""
    values = [stats.spearmanr(a[labels == c], b[labels == c]).statistic for c in np.unique(labels)]
    return float(np.mean(values))


def agreement(
    scores: dict[str, np.ndarray], labels: np.ndarray, *, fraction: float = 0.1, seed: int = 0
) -> pd.DataFrame:
    """For every pair of scores: within-class Spearman, tail overlap, and the same for a shuffled control.

    The control permutes the second score within each class, which keeps its distribution and
    destroys any relation to the images.
    """
    rng = np.random.default_rng(seed)
    names, rows = list(scores), []
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            a, b = scores[first], scores[second]
            shuffled = _shuffle_within(b, labels, rng)
            rows.append(
                {
                    "pair": f"{first} / {second}",
                    "spearman": within_class_spearman(a, b, labels),
                    "tail_overlap": tail_overlap(a, b, labels, fraction),
                    "spearman_shuffled": within_class_spearman(a, shuffled, labels),
                    "tail_overlap_shuffled": tail_overlap(a, shuffled, labels, fraction),
                }
            )
    return pd.DataFrame(rows)


def _shuffle_within(values: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    shuffled = values.copy()
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        shuffled[members] = values[rng.permutation(members)]
    return shuffled


def singular_vectors(
    encoder: nn.Module, x: torch.Tensor, k: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values (min(K, D),) and top-k right-singular vectors (k, *x.shape[1:]) of J_f at x (1, ...).

    The right-singular vectors are the input directions the encoder stretches most; their signs are
    fixed so that each has a positive sum.
    """
    if x.shape[0] != 1:
        raise ValueError(f"x: expected one sample (1, ...), got a batch of {x.shape[0]}")
    was_training = encoder.training
    encoder.eval()
    with torch.enable_grad():
        K = encoder(x).shape[1]
        J = jacobian_rows(encoder, x, K)[0].detach().double()  # (K, D)
    encoder.train(was_training)
    _, sigma, vh = torch.linalg.svd(J, full_matrices=False)
    top = vh[:k] * torch.sign(vh[:k].sum(1, keepdim=True) + 1e-30)
    return sigma, top.reshape(k, *x.shape[1:]).float()
