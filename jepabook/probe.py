"""Embeddings of an image set and the probes that show a representation is real.

Two standard probes of frozen features, both reported per test sample so that two representations
can be compared on the same test images (a paired bootstrap):
- `probe_correct`: multinomial logistic regression on standardised features (the linear probe);
- `knn_correct`: a k-nearest-neighbour vote with cosine similarity, weighted exp(similarity / T)
  (k = 20, T = 0.07, the usual self-supervised protocol).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from jepabook.metrics import Interval, bootstrap_indices
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


def knn_correct(
    train_features: torch.Tensor | np.ndarray,
    train_labels: torch.Tensor | np.ndarray,
    test_features: torch.Tensor | np.ndarray,
    test_labels: torch.Tensor | np.ndarray,
    *,
    k: int = 20,
    temperature: float = 0.07,
    batch_size: int = 1000,
) -> np.ndarray:
    """(M,) bool: which test samples (M, F) a weighted k-NN vote among train (N, F) classifies right.

    Features are compared by cosine similarity s; each of the k nearest neighbours votes for its
    label with weight exp(s / temperature).
    """
    train = torch.nn.functional.normalize(_flat(train_features), dim=1)
    test = torch.nn.functional.normalize(_flat(test_features), dim=1)
    train_y = torch.as_tensor(np.asarray(train_labels), dtype=torch.long)
    test_y = torch.as_tensor(np.asarray(test_labels), dtype=torch.long)
    if len(train) != len(train_y) or len(test) != len(test_y):
        raise ValueError("train_labels and test_labels: expected one label per row of features")
    if not 1 <= k <= len(train):
        raise ValueError(f"k: expected 1..{len(train)} neighbours, got {k}")
    n_classes = int(max(train_y.max(), test_y.max())) + 1
    correct = []
    for start in range(0, len(test), batch_size):
        similarity, index = (test[start : start + batch_size] @ train.T).topk(k, dim=1)
        votes = torch.zeros(len(index), n_classes, dtype=similarity.dtype)
        votes.scatter_add_(1, train_y[index], (similarity / temperature).exp())
        correct.append(votes.argmax(1) == test_y[start : start + batch_size])
    return torch.cat(correct).numpy()


def _flat(features: torch.Tensor | np.ndarray) -> torch.Tensor:
    features = torch.as_tensor(np.asarray(features), dtype=torch.float32)
    return features.reshape(len(features), -1)


def accuracy_interval(correct: np.ndarray, n_boot: int = 1000, seed: int = 0) -> Interval:
    """Accuracy of per-sample outcomes (M,) bool with a 95% percentile bootstrap interval."""
    correct = np.asarray(correct, dtype=np.float64)
    draws = correct[bootstrap_indices(len(correct), n_boot, seed)].mean(1)
    low, high = np.quantile(draws, [0.025, 0.975])
    return Interval(float(correct.mean()), float(low), float(high))


def paired_accuracy_difference(
    first: np.ndarray, second: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> Interval:
    """Accuracy of `first` minus that of `second`, per-sample outcomes (M,) on the same test samples,
    with a paired bootstrap interval (every resample draws the same samples for both)."""
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if first.shape != second.shape:
        raise ValueError(
            f"first and second: expected outcomes on the same test samples, got {first.shape} "
            f"and {second.shape}"
        )
    return accuracy_interval(first - second, n_boot, seed)


def probe_outcomes(
    fit: torch.Tensor | np.ndarray,
    fit_labels: torch.Tensor | np.ndarray,
    test: torch.Tensor | np.ndarray,
    test_labels: torch.Tensor | np.ndarray,
) -> dict[str, np.ndarray]:
    """{"linear": (M,) bool, "knn": (M,) bool}: both probes of fit (N, ...) -> test (M, ...) features."""
    return {
        "linear": probe_correct(fit, fit_labels, test, test_labels),
        "knn": knn_correct(fit, fit_labels, test, test_labels),
    }


def standard_probes(
    outcomes: dict[str, dict[str, np.ndarray]],
    *,
    against: tuple[str, ...] = ("pixels", "random"),
) -> dict[str, dict[str, list[float]]]:
    """Probe accuracies of several representations of the same test images, with intervals.

    outcomes: {label: probe_outcomes(...)}; a baseline is a label in `against`, or that word
    followed by the label ("random output" is the baseline "random" of "output"). Returns {label:
    {"linear": [acc, low, high], "knn": [...], and for every baseline b that exists,
    "linear_minus_b" / "knn_minus_b": [difference, low, high]}} (paired bootstrap, 95%).
    """
    table = {}
    for label, correct in outcomes.items():
        row = {probe: _listed(accuracy_interval(c)) for probe, c in correct.items()}
        for base in against:
            baseline = next((b for b in (f"{base} {label}", base) if b in outcomes), None)
            if baseline is None or baseline == label or label.startswith(f"{base} "):
                continue
            for probe, c in correct.items():
                difference = paired_accuracy_difference(c, outcomes[baseline][probe])
                row[f"{probe}_minus_{base}"] = _listed(difference)
        table[label] = row
    return table


def _listed(interval: Interval) -> list[float]:
    return [round(interval.estimate, 4), round(interval.low, 4), round(interval.high, 4)]
