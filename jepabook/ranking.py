"""Rankings that find problem images in a set, and pruning by a ranking (library).

A ranking is a score per image, higher = more in-distribution (JEPA-SCORE, a k-NN score, ...).
How well it finds a kind of problem image is its precision at k: of the k images it ranks most
suspicious, the share that are of that kind (k = how many there are: the R-precision), with a
bootstrap interval (`bootstrap_precision`) beside what a random ranking gets (`random_precision`, a
hypergeometric range). Suspicious means the *lowest* scores for damaged or foreign images and the
*highest* for near-duplicates, which a density sees as at least as likely as their originals; the
dedicated duplicate tool is the distance to the nearest *other* image (`nearest_other_distance`).

Pruning (`prune`, `random_keep`) removes a fraction of the lowest-scored images, or as many at
random; `compare_to_random` says whether a downstream accuracy differs from random removal's.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats
from sklearn.neighbors import NearestNeighbors

from jepabook.datasets import _seed
from jepabook.metrics import Interval


def as_fraction(name: str, value: object, *, closed: bool = False) -> float:
    """`value` as a float in (0, 1) ([0, 1) if closed), else a ValueError naming `name`."""
    ok = isinstance(value, int | float | np.floating) and not isinstance(value, bool)
    if not ok or not (0 < value < 1 or (closed and value == 0)):
        expected = "[0, 1)" if closed else "(0, 1)"
        raise ValueError(f"{name}: expected a number in {expected}, got {value!r}")
    return float(value)


def as_scores(name: str, values) -> np.ndarray:
    """`values` as a finite, non-empty float64 array (n,), else a ValueError naming `name`."""
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D array, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError(
            f"{name}: expected finite values, sample {np.flatnonzero(~np.isfinite(values))[0]} is not"
        )
    return values


def as_mask(name: str, values, n: int) -> np.ndarray:
    """`values` checked to be a boolean array (n,), else a ValueError naming `name`."""
    values = np.asarray(values)
    if values.dtype != bool or values.shape != (n,):
        raise ValueError(
            f"{name}: expected a boolean array of shape ({n},), got {values.dtype} {values.shape}"
        )
    return values


def is_lowest_first(value: str) -> bool:
    """True for "lowest" (least likely first), False for "highest"."""
    if value not in ("lowest", "highest"):
        raise ValueError(f"direction: expected 'lowest' or 'highest', got {value!r}")
    return value == "lowest"


def nearest_other_distance(features, *, normalise: bool = True) -> np.ndarray:
    """(n,) distance from each row of features (n, d) to the nearest *other* row (n >= 2).

    normalise: L2-normalise the rows first (as k-NN detectors do). Small = likely a duplicate; the
    leave-one-out 1-nearest-neighbour distance, so large = isolated.
    """
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    x = np.asarray(features, dtype=np.float64)
    x = x.reshape(len(x), -1) if x.ndim > 2 else x
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"features: expected an (n, d) array with n >= 2, got shape {x.shape}")
    if normalise:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    distances, _ = NearestNeighbors(n_neighbors=1).fit(x).kneighbors()  # excludes each row itself
    return distances[:, 0]


def neighbour_share(features, members, k: int = 10, *, normalise: bool = True) -> np.ndarray:
    """For each member row: the share of its k nearest *other* rows that are members too.

    features: (n, d); members: (n,) bool. Returns (members.sum(),). A high share means the members
    form a cluster of their own, which hides them from any score that looks at k <= cluster size
    neighbours (a k-NN distance, a density estimate): they support each other.
    """
    x = np.asarray(features, dtype=np.float64)
    x = x.reshape(len(x), -1) if x.ndim > 2 else x
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"features: expected an (n, d) array with n >= 2, got shape {x.shape}")
    members = as_mask("members", members, len(x))
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k < len(x):
        raise ValueError(f"k: expected an integer in 1..{len(x) - 1}, got {k!r}")
    if normalise:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    _, index = NearestNeighbors(n_neighbors=k).fit(x).kneighbors()
    return members[index[members]].mean(1)


def _flagged(scores: np.ndarray, k: int, lowest: bool) -> np.ndarray:
    order = np.argsort(scores if lowest else -scores, kind="stable")
    return order[:k]


def precision_at_k(scores, targets, k: int | None = None, *, direction: str = "lowest") -> float:
    """Share of targets among the k images a score ranks first.

    scores: (n,) higher = more in-distribution; targets: (n,) bool; k: default the number of targets
    (precision = recall then); direction: "lowest" (least likely first) or "highest".
    """
    scores = as_scores("scores", scores)
    targets = as_mask("targets", targets, len(scores))
    lowest = is_lowest_first(direction)
    k = int(targets.sum()) if k is None else k
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= len(scores):
        raise ValueError(f"k: expected an integer in 1..{len(scores)}, got {k!r}")
    return float(targets[_flagged(scores, int(k), lowest)].mean())


def bootstrap_precision(
    scores,
    targets,
    *,
    direction: str = "lowest",
    share_of_k: float = 1.0,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Precision at k = round(share_of_k * number of targets), with a percentile bootstrap interval.

    Each bootstrap draw resamples the n images with replacement and recounts its targets, so the
    interval covers both which images happen to be in the set and how many problems it holds.
    """
    scores = as_scores("scores", scores)
    targets = as_mask("targets", targets, len(scores))
    lowest = is_lowest_first(direction)
    if not isinstance(share_of_k, int | float) or not 0 < share_of_k <= 1:
        raise ValueError(f"share_of_k: expected a number in (0, 1], got {share_of_k!r}")
    if not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot: expected a positive integer, got {n_boot!r}")
    if not 0 < level < 1:
        raise ValueError(f"level: expected a number in (0, 1), got {level!r}")
    if not targets.any():
        raise ValueError("targets: expected at least one target")

    def one(s: np.ndarray, t: np.ndarray) -> float:
        k = max(1, int(round(share_of_k * t.sum())))
        return float(t[_flagged(s, k, lowest)].mean())

    rng = np.random.default_rng(_seed(seed))
    draws = []
    for _ in range(n_boot):
        index = rng.integers(0, len(scores), len(scores))
        if targets[index].any():
            draws.append(one(scores[index], targets[index]))
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return Interval(one(scores, targets), float(low), float(high))


def random_precision(n: int, n_targets: int, k: int, level: float = 0.95) -> Interval:
    """Precision at k of a random ranking of n images holding n_targets targets: its expectation
    n_targets / n and the central `level` range of hits / k (hits ~ hypergeometric)."""
    for name, value, low in (("n", n, 1), ("n_targets", n_targets, 0), ("k", k, 1)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
    for name, value in (("n_targets", n_targets), ("k", k)):
        if value > n:
            raise ValueError(f"{name}: expected at most n={n}, got {value}")
    hits = stats.hypergeom(n, n_targets, k)
    low, high = hits.ppf([(1 - level) / 2, (1 + level) / 2])
    return Interval(n_targets / n, float(low) / k, float(high) / k)


def prune(scores, fraction: float) -> np.ndarray:
    """(n,) bool keep-mask that removes the round(fraction * n) lowest-scored (least likely) images."""
    scores = as_scores("scores", scores)
    fraction = as_fraction("fraction", fraction, closed=True)
    keep = np.ones(len(scores), dtype=bool)
    keep[np.argsort(scores, kind="stable")[: int(round(fraction * len(scores)))]] = False
    return keep


def random_keep(n: int, fraction: float, seed: int = 0) -> np.ndarray:
    """(n,) bool keep-mask that removes round(fraction * n) images chosen at random (seeded)."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n: expected a positive integer, got {n!r}")
    fraction = as_fraction("fraction", fraction, closed=True)
    keep = np.ones(n, dtype=bool)
    keep[np.random.default_rng(_seed(seed)).permutation(n)[: int(round(fraction * n))]] = False
    return keep


def compare_to_random(correct, random_correct) -> dict:
    """Whether a probe's test accuracy differs from random removal's, beyond the noise.

    correct: (m,) bool outcomes of the probe on the m test samples; random_correct: (r, m) bool
    outcomes of the r random removals on the same test samples. The difference is accuracy minus the
    mean accuracy of the random removals; its yardstick is 2 x sqrt(the variance of the random
    accuracies over seeds (0 with one seed) + the paired test-set variance, var_i(correct_i - mean_r
    random_correct_ri) / m). Returns difference, half_width and verdict: "helps", "hurts" or
    "no measurable effect".
    """
    correct = np.asarray(correct)
    random_correct = np.atleast_2d(np.asarray(random_correct))
    if correct.ndim != 1 or correct.size == 0:
        raise ValueError(f"correct: expected a non-empty (m,) array, got shape {correct.shape}")
    if random_correct.shape[1:] != correct.shape or random_correct.size == 0:
        raise ValueError(
            f"random_correct: expected an (r, {correct.size}) array, got shape {random_correct.shape}"
        )
    correct, random_correct = correct.astype(np.float64), random_correct.astype(np.float64)
    accuracies = random_correct.mean(1)
    seeds = float(accuracies.var(ddof=1)) if len(accuracies) > 1 else 0.0
    paired = float((correct - random_correct.mean(0)).var(ddof=1)) / correct.size
    half_width = 2 * np.sqrt(seeds + paired)
    difference = float(correct.mean() - accuracies.mean())
    verdict = "no measurable effect"
    if difference > half_width:
        verdict = "helps"
    elif difference < -half_width:
        verdict = "hurts"
    return {"difference": difference, "half_width": float(half_width), "verdict": verdict}


def removed_by_class(labels, keep, classes: Sequence[str] | None = None) -> pd.Series:
    """Share of each class among the removed images (labels (n,), keep (n,) bool)."""
    labels = np.asarray(labels)
    keep = as_mask("keep", keep, len(labels))
    removed = labels[~keep]
    n_classes = len(classes) if classes else int(labels.max()) + 1
    counts = np.bincount(removed, minlength=n_classes) / max(1, len(removed))
    return pd.Series(counts, index=list(classes) if classes else range(n_classes), name="removed")
