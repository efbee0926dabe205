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
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(train_features) != len(train_labels) or len(test_features) != len(test_labels):
        raise ValueError("features and labels: expected the same number of rows in each pair")
    as_numpy = [
        np.asarray(a.reshape(len(a), -1) if a.ndim > 1 else a)
        for a in (train_features, train_labels, test_features, test_labels)
    ]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    model.fit(as_numpy[0], as_numpy[1])
    return float(model.score(as_numpy[2], as_numpy[3]))
