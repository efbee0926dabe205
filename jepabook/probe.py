"""Embeddings of an image set and the linear probe that shows a representation is real."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from jepabook.score import eval_mode


@torch.no_grad()
def embed(encoder: nn.Module, images: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """(N, ...) inputs -> (N, K) embeddings on the CPU, computed in eval mode (mode restored)."""
    device = next(encoder.parameters()).device
    with eval_mode(encoder):
        parts = [
            encoder(images[i : i + batch_size].to(device)).cpu()
            for i in range(0, len(images), batch_size)
        ]
    return torch.cat(parts)


def linear_probe(
    train_features: torch.Tensor | np.ndarray,
    train_labels: torch.Tensor | np.ndarray,
    test_features: torch.Tensor | np.ndarray,
    test_labels: torch.Tensor | np.ndarray,
    *,
    max_iter: int = 1000,
) -> float:
    """Test accuracy of a multinomial logistic regression on standardised features (N, K).

    scikit-learn's LogisticRegression (L2, C=1, lbfgs) after StandardScaler fitted on the train set.
    """
    correct = probe_correct(
        train_features, train_labels, test_features, test_labels, max_iter=max_iter
    )
    return float(correct.mean())


def probe_correct(
    train_features: torch.Tensor | np.ndarray,
    train_labels: torch.Tensor | np.ndarray,
    test_features: torch.Tensor | np.ndarray,
    test_labels: torch.Tensor | np.ndarray,
    *,
    max_iter: int = 1000,
) -> np.ndarray:
    """(M,) bool: which test samples the linear probe of `linear_probe` classifies correctly.

    Per-sample outcomes let two probes be compared on the same test images (a paired comparison).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    train_features, train_labels, test_features, test_labels = (
        np.asarray(a) for a in (train_features, train_labels, test_features, test_labels)
    )
    if len(train_features) != len(train_labels):
        raise ValueError(
            f"train_labels: expected {len(train_features)} rows like train_features (features and labels pair up), "
            f"got {len(train_labels)}"
        )
    if len(test_features) != len(test_labels):
        raise ValueError(
            f"test_labels: expected {len(test_features)} rows like test_features (features and labels pair up), "
            f"got {len(test_labels)}"
        )
    x_train, x_test = (a.reshape(len(a), -1) for a in (train_features, test_features))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    model.fit(x_train, train_labels)
    return model.predict(x_test) == test_labels
