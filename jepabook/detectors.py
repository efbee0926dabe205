"""Outlier detectors behind one interface: fit on in-distribution training samples, then score new
samples, higher = more in-distribution.

A `Sample` holds what detectors may look at: the embeddings f(x) (n, K), and optionally the encoder
inputs x (n, ...), the encoder itself and class labels. Detectors:

- from the encoder's Jacobian (jepabook.score): `JepaScore`; `ChangeOfVariables`, JEPA-SCORE +
  log N(f(x); mu, Sigma), the form of Lemma 2's change of variables (a density of x
  only when K = D); `MultiView`, the multi-view
  estimator of eq. (4), -logmeanexp over M random views of -JEPA-SCORE;
- from the embeddings only, where scikit-learn does the work: `KNN` (distance to the k-th nearest
  training embedding after L2 normalisation, sklearn.neighbors.NearestNeighbors), `Mahalanobis`
  (class-agnostic, or class-conditional with a tied covariance; sklearn.covariance.EmpiricalCovariance),
  `GaussianMixtureDensity` (sklearn.mixture.GaussianMixture), `KernelDensity`
  (sklearn.neighbors.KernelDensity, Gaussian kernel, Scott's bandwidth), `EmbeddingNorm` (||f(x)||).

`evaluate` puts every detector through the same measurement: AUROC, AUPR and FPR95 with bootstrap
intervals (jepabook.metrics.detection_metrics) for each out-of-domain set.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from jepabook.metrics import detection_metrics
from jepabook.probe import embed as embeddings
from jepabook.score import jepa_score, score_dataset


@dataclass
class Sample:
    """What a detector sees of n samples.

    embeddings: (n, K) encoder outputs f(x); inputs: (n, ...) encoder inputs x (for detectors that
    need the Jacobian); encoder: the model f; labels: (n,) integer classes; cache: values computed
    once per sample set and shared by detectors (e.g. JEPA-SCORE).
    """

    embeddings: np.ndarray
    inputs: torch.Tensor | None = None
    encoder: nn.Module | None = None
    labels: np.ndarray | None = None
    cache: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.embeddings = np.asarray(self.embeddings, dtype=np.float64)
        if self.embeddings.ndim != 2 or len(self.embeddings) == 0:
            raise ValueError(
                f"embeddings: expected an (n, K) array with n >= 1, got shape {self.embeddings.shape}"
            )
        if not np.isfinite(self.embeddings).all():
            bad = int(np.flatnonzero(~np.isfinite(self.embeddings).all(1))[0])
            raise ValueError(f"embeddings: expected finite values, sample {bad} is not")
        for name in ("inputs", "labels"):
            value = getattr(self, name)
            if value is not None and len(value) != len(self.embeddings):
                raise ValueError(
                    f"{name}: expected {len(self.embeddings)} rows like embeddings, got {len(value)}"
                )
        if self.labels is not None:
            self.labels = np.asarray(self.labels)

    def __len__(self) -> int:
        return len(self.embeddings)

    def subset(self, index: np.ndarray) -> Sample:
        """The samples at `index` (an integer or boolean array); cached values are subset too."""
        index = np.asarray(index)
        rows = torch.as_tensor(np.flatnonzero(index) if index.dtype == bool else index)
        return Sample(
            self.embeddings[index],
            None if self.inputs is None else self.inputs[rows],
            self.encoder,
            None if self.labels is None else self.labels[index],
            {key: value[index] for key, value in self.cache.items()},
        )

    def cached(self, key: str, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """self.cache[key], computed once with compute() -> (n,)."""
        if key not in self.cache:
            self.cache[key] = np.asarray(compute(), dtype=np.float64)
        return self.cache[key]

    def needs(self, *names: str, by: str) -> None:
        """Raise a ValueError naming the detector `by` if any of these fields is missing."""
        missing = [name for name in names if getattr(self, name) is None]
        if missing:
            raise ValueError(f"sample: {by} needs {' and '.join(missing)}, which this sample lacks")


def embed_sample(
    encoder: nn.Module,
    inputs: torch.Tensor,
    labels: np.ndarray | torch.Tensor | None = None,
    *,
    batch_size: int = 512,
) -> Sample:
    """Sample of encoder inputs (n, ...): embeddings f(x) (n, K) computed in eval mode, batch by batch."""

    labels = labels.numpy() if isinstance(labels, torch.Tensor) else labels
    z = embeddings(encoder, inputs, batch_size).double().numpy()
    return Sample(z, inputs, encoder, labels)


class Detector(ABC):
    """fit(train) on in-distribution samples, then score(sample) -> (n,), higher = more in-distribution."""

    name = "detector"

    def fit(self, train: Sample) -> Detector:
        """Learn what in-distribution looks like from `train`; returns self."""
        return self

    @abstractmethod
    def score(self, sample: Sample) -> np.ndarray:
        """(n,) float64 scores of the samples; higher = more in-distribution."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class _EmbeddingDetector(Detector):
    """A detector of embeddings: checks that scored embeddings have the dimension it was fitted on."""

    dim: int | None = None

    def fit(self, train: Sample) -> Detector:
        self.dim = train.embeddings.shape[1]
        self._fit(train)
        return self

    def _fit(self, train: Sample) -> None:
        pass

    def score(self, sample: Sample) -> np.ndarray:
        if self.dim is None:
            raise RuntimeError(f"{self.name}: call fit(train) before score(sample)")
        if sample.embeddings.shape[1] != self.dim:
            raise ValueError(
                f"sample: {self.name} was fitted on {self.dim}-D embeddings, "
                f"got {sample.embeddings.shape[1]}-D"
            )
        return np.asarray(self._score(sample.embeddings, sample), dtype=np.float64)

    @abstractmethod
    def _score(self, z: np.ndarray, sample: Sample) -> np.ndarray: ...


# ---------------------------------------------------------------- JEPA-SCORE family


class JepaScore(Detector):
    """JEPA-SCORE(x) = sum_k log sigma_k(J_f(x)) (jepabook.jepa_score); needs inputs and encoder."""

    name = "JEPA-SCORE"

    def __init__(self, batch_size: int = 32, progress: bool = False):
        self.batch_size, self.progress = batch_size, progress

    def score(self, sample: Sample) -> np.ndarray:
        return self.jepa(sample)

    def jepa(self, sample: Sample) -> np.ndarray:
        """(n,) JEPA-SCORE of the sample, computed once per sample (kept in sample.cache)."""
        sample.needs("inputs", "encoder", by=self.name)
        return sample.cached("jepa-score", lambda: self._jepa(sample))

    def _jepa(self, sample: Sample) -> np.ndarray:

        return score_dataset(
            sample.encoder, sample.inputs, batch_size=self.batch_size, progress=self.progress
        )


class ChangeOfVariables(JepaScore):
    """JEPA-SCORE(x) + log N(f(x); mu, Sigma).

    With gaussian="standard" (N(0, I), the law a Gaussian-embedding JEPA is trained towards) and
    K = D this is the change-of-variables density of Lemma 2 (`jepabook.density`). With K < D, as
    for every image encoder here, it is not a density of x: it adds how likely the embedding is under
    a Gaussian to how much f stretches volume in the directions it keeps, a heuristic combination.
    gaussian="fitted" uses mu, Sigma of the training embeddings instead of N(0, I).
    """

    def __init__(self, gaussian: str = "fitted", batch_size: int = 32, progress: bool = False):
        if gaussian not in ("fitted", "standard"):
            raise ValueError(f"gaussian: expected 'fitted' or 'standard', got {gaussian!r}")
        super().__init__(batch_size, progress)
        self.gaussian = gaussian
        self.name = "JEPA-SCORE + log N" + (" (fitted)" if gaussian == "fitted" else "(0, I)")
        self.law = None

    def fit(self, train: Sample) -> Detector:
        from scipy import stats

        K = train.embeddings.shape[1]
        if self.gaussian == "standard":
            mean, cov = np.zeros(K), np.eye(K)
        else:
            mean, cov = train.embeddings.mean(0), np.cov(train.embeddings, rowvar=False)
            # a ridge of 1e-6 of the mean variance: a (near-)singular fit would give log N = -inf
            cov = cov + 1e-6 * np.trace(cov) / K * np.eye(K)
        self.law = stats.multivariate_normal(mean, cov)
        return self

    def score(self, sample: Sample) -> np.ndarray:
        if self.law is None:
            raise RuntimeError(f"{self.name}: call fit(train) before score(sample)")
        return self.jepa(sample) + np.atleast_1d(self.law.logpdf(sample.embeddings))


class MultiView(JepaScore):
    """The multi-view estimator of eq. (4): -logmeanexp over M random views of -JEPA-SCORE.

    augment(x, generator) -> x': a random view of encoder inputs (B, ...) -> (B, ...), drawn with the
    given torch.Generator, so that a seed fixes the views.
    """

    def __init__(
        self,
        augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor],
        n_views: int = 8,
        *,
        seed: int = 0,
        batch_size: int = 32,
        progress: bool = False,
    ):
        if not callable(augment):
            raise TypeError(f"augment: expected a callable (x, generator) -> x', got {augment!r}")
        if not isinstance(n_views, int) or n_views < 1:
            raise ValueError(f"n_views: expected a positive integer, got {n_views!r}")
        super().__init__(batch_size, progress)
        self.augment, self.n_views, self.seed = augment, n_views, seed
        self.name = f"multi-view JEPA-SCORE (M={n_views})"

    def jepa(self, sample: Sample) -> np.ndarray:
        sample.needs("inputs", "encoder", by=self.name)
        key = f"multi-view-{self.n_views}-{self.seed}-{id(self.augment)}"
        return sample.cached(key, lambda: self._views(sample))

    def _views(self, sample: Sample) -> np.ndarray:
        from tqdm.auto import tqdm

        device = next(sample.encoder.parameters()).device
        generator = torch.Generator(device=device).manual_seed(self.seed)

        def view(x: torch.Tensor) -> torch.Tensor:
            return self.augment(x, generator)

        starts = range(0, len(sample), self.batch_size)
        parts = [
            jepa_score(
                sample.encoder,
                sample.inputs[i : i + self.batch_size].to(device),
                augment=view,
                n_views=self.n_views,
                chunk_size=self.batch_size,
            ).cpu()
            for i in tqdm(starts, disable=not self.progress, desc=self.name, leave=False)
        ]
        return torch.cat(parts).numpy()


# ---------------------------------------------------------------- detectors of embeddings


def _unit(z: np.ndarray) -> np.ndarray:
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


class KNN(_EmbeddingDetector):
    """-(distance to the k-th nearest training embedding), both L2-normalised (Sun et al., 2022);
    normalise=False measures distances between the embeddings as they are."""

    def __init__(self, k: int = 10, normalise: bool = True):
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k: expected a positive integer, got {k!r}")
        self.k, self.normalise = k, normalise
        self.name = f"k-NN (k={k})" if normalise else f"k-NN, unnormalised (k={k})"

    def _fit(self, train: Sample) -> None:
        from sklearn.neighbors import NearestNeighbors

        if len(train) < self.k:
            raise ValueError(
                f"train: k-NN with k={self.k} needs >= {self.k} samples, got {len(train)}"
            )
        self.index = NearestNeighbors(n_neighbors=self.k).fit(self._prepare(train.embeddings))

    def _prepare(self, z: np.ndarray) -> np.ndarray:
        return _unit(z) if self.normalise else z

    def _score(self, z: np.ndarray, sample: Sample) -> np.ndarray:
        distances, _ = self.index.kneighbors(self._prepare(z))
        return -distances[:, -1]


class Mahalanobis(_EmbeddingDetector):
    """-(squared Mahalanobis distance) of f(x) to the training embeddings' mean and covariance.

    class_conditional=True (Lee et al., 2018): one mean per class, one covariance shared by the
    classes (fitted on the within-class residuals), and the distance to the nearest class mean;
    needs labels on the training sample.
    """

    def __init__(self, class_conditional: bool = False):
        self.class_conditional = class_conditional
        self.name = "Mahalanobis" + (" (per class)" if class_conditional else "")

    def _fit(self, train: Sample) -> None:
        from sklearn.covariance import EmpiricalCovariance

        z = train.embeddings
        if not self.class_conditional:
            self.means = z.mean(0, keepdims=True)
            residuals = z - self.means
        else:
            train.needs("labels", by=self.name)
            classes = np.unique(train.labels)
            self.means = np.stack([z[train.labels == c].mean(0) for c in classes])
            residuals = z - self.means[np.searchsorted(classes, train.labels)]
        self.covariance = EmpiricalCovariance(assume_centered=True).fit(residuals)

    def _score(self, z: np.ndarray, sample: Sample) -> np.ndarray:
        distances = np.stack([self.covariance.mahalanobis(z - mean) for mean in self.means])
        return -distances.min(0)


class GaussianMixtureDensity(_EmbeddingDetector):
    """log p(f(x)) under a Gaussian mixture fitted to the training embeddings (scikit-learn, EM)."""

    def __init__(self, n_components: int = 10, covariance_type: str = "full", seed: int = 0):
        self.n_components, self.covariance_type, self.seed = n_components, covariance_type, seed
        self.name = f"Gaussian mixture ({n_components})"

    def _fit(self, train: Sample) -> None:
        from sklearn.mixture import GaussianMixture

        self.model = GaussianMixture(
            self.n_components,
            covariance_type=self.covariance_type,
            reg_covar=1e-4,
            random_state=self.seed,
        ).fit(train.embeddings)

    def _score(self, z: np.ndarray, sample: Sample) -> np.ndarray:
        return self.model.score_samples(z)


class KernelDensity(_EmbeddingDetector):
    """log p(f(x)) under a Gaussian kernel density of the training embeddings (scikit-learn)."""

    def __init__(self, bandwidth: float | str = "scott"):
        self.bandwidth = bandwidth
        self.name = "kernel density"

    def _fit(self, train: Sample) -> None:
        from sklearn.neighbors import KernelDensity as SklearnKDE

        self.model = SklearnKDE(bandwidth=self.bandwidth).fit(train.embeddings)

    def _score(self, z: np.ndarray, sample: Sample) -> np.ndarray:
        return self.model.score_samples(z)


class EmbeddingNorm(_EmbeddingDetector):
    """||f(x)||: the feature-norm score (in-distribution inputs tend to get larger embeddings)."""

    name = "embedding norm"

    def _score(self, z: np.ndarray, sample: Sample) -> np.ndarray:
        return np.linalg.norm(z, axis=1)


def standard_detectors(
    *, k: int = 10, labels: bool = True, augment=None, n_views: int = 8, seed: int = 0
) -> list[Detector]:
    """The book's line-up: the JEPA-SCORE family (multi-view only with `augment`) and the baselines."""
    detectors: list[Detector] = [JepaScore(), ChangeOfVariables("fitted")]
    if augment is not None:
        detectors.append(MultiView(augment, n_views, seed=seed))
    detectors += [KNN(k), KNN(k, normalise=False), Mahalanobis()]
    if labels:
        detectors.append(Mahalanobis(class_conditional=True))
    detectors += [GaussianMixtureDensity(seed=seed), KernelDensity(), EmbeddingNorm()]
    return detectors


# ---------------------------------------------------------------- the same measurement for every detector


def evaluate(
    detectors: list[Detector],
    train: Sample,
    inliers: Sample,
    outliers: dict[str, Sample],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Fit every detector on `train`, score the in-distribution test sample and each outlier set.

    Returns one row per (detector, set): auroc, aupr, fpr95 and their bootstrap intervals
    (<metric>_low, <metric>_high).
    """

    rows = []
    for detector in detectors:
        detector.fit(train)
        inlier_scores = _finite(detector.score(inliers), detector, "the in-distribution sample")
        for name, sample in outliers.items():
            outlier_scores = _finite(detector.score(sample), detector, f"set {name!r}")
            intervals = detection_metrics(inlier_scores, outlier_scores, n_boot=n_boot, seed=seed)
            row = {"detector": detector.name, "set": name}
            for metric, interval in intervals.items():
                row |= {metric: interval.estimate, f"{metric}_low": interval.low}
                row[f"{metric}_high"] = interval.high
            rows.append(row)
    return pd.DataFrame(rows)


def _finite(scores: np.ndarray, detector: Detector, where: str) -> np.ndarray:
    if not np.isfinite(scores).all():
        bad = np.flatnonzero(~np.isfinite(scores))
        raise ValueError(
            f"{detector.name} gave {len(bad)} non-finite scores on {where} (first: sample {bad[0]}, "
            f"value {scores[bad[0]]})"
        )
    return scores


def cross_fit_scores(
    detector: Detector, sample: Sample, folds: int = 2, seed: int = 0
) -> np.ndarray:
    """Scores (n,) of every sample by `detector` fitted on the other folds (none scores itself).

    For ranking a training set by itself (curation): a k-NN or a kernel density fitted on a sample
    finds each of its points at distance 0.
    """
    if not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds: expected an integer >= 2, got {folds!r}")
    if isinstance(detector, JepaScore):
        detector.jepa(sample)  # computed once on the whole sample; the folds share it
    fold = np.random.default_rng(seed).permutation(len(sample)) % folds
    scores = np.empty(len(sample))
    for f in range(folds):
        held = fold == f
        detector.fit(sample.subset(~held))
        scores[held] = detector.score(sample.subset(held))
    return scores
