"""Metrics shared by the chapters: correlations with bootstrap confidence intervals, and two-sample
distances (MMD with an RBF bandwidth ladder, energy distance) for sampling, and detection metrics
(AUROC, AUPR, FPR at 95% TPR) with bootstrap intervals for outlier detection.

Correlations compare an estimate (n,) with a reference (n,) on the same samples; the bootstrap
resamples those samples with replacement (paired), so two estimates scored on the same samples can
also be compared through the confidence interval of their difference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from scipy import stats

Method = Literal["pearson", "spearman"]


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile bootstrap confidence interval [low, high]."""

    estimate: float
    low: float
    high: float

    def excludes(self, value: float = 0.0) -> bool:
        """Whether `value` lies outside the interval."""
        return value < self.low or value > self.high

    def __str__(self) -> str:
        return format_interval(self.estimate, self.low, self.high)


def sides(intervals: dict, at: float = 0.5) -> dict[str, list]:
    """Which intervals {name: Interval} lie wholly "above" `at`, wholly "below" it, or "across" it:
    e.g. the out-of-domain sets that score lower (AUROC above 0.5) and those inverted (below)."""
    out = {"above": [], "below": [], "across": []}
    for name, interval in intervals.items():
        side = "above" if interval.low > at else "below" if interval.high < at else "across"
        out[side].append(name)
    return out


def format_interval(estimate: float, low: float, high: float, digits: int = 3) -> str:
    """'0.834 [0.827, 0.842]': an estimate and its interval, as the book prints them everywhere."""
    return f"{estimate:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def interval_strings(
    table, column: str, low: str | None = None, high: str | None = None, digits: int = 2
):
    """format_interval of every row of a DataFrame: the estimate in `column`, its interval in `low`
    and `high` (default: "<column>_low" and "<column>_high"). Returns a Series of strings."""
    low, high = low or f"{column}_low", high or f"{column}_high"
    return table.apply(lambda r: format_interval(r[column], r[low], r[high], digits), axis=1)


def _as_pair(a, b) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape or a.size < 3:
        raise ValueError(
            f"a and b: expected two arrays of equal length >= 3, got {a.shape} and {b.shape}"
        )
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        bad = int(np.flatnonzero(~(np.isfinite(a) & np.isfinite(b)))[0])
        raise ValueError(f"a and b: expected finite values, sample {bad} is not")
    return a, b


def correlation(a, b, method: Method = "pearson") -> float:
    """Pearson or Spearman correlation of two (n,) arrays (0 when one of them is constant)."""
    a, b = _as_pair(a, b)
    if method == "spearman":
        a, b = stats.rankdata(a), stats.rankdata(b)
    elif method != "pearson":
        raise ValueError(f"method: expected 'pearson' or 'spearman', got {method!r}")
    return _pearson_rows(a[None], b[None])[0]


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise Pearson correlation of (R, n) arrays: (R,); 0 for a constant row."""
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    denominator = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(1) / denominator
    return np.where(denominator > 0, r, 0.0)


def bootstrap_indices(n: int, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """(n_boot, n) indices of paired bootstrap resamples of n samples."""
    if n < 1 or n_boot < 1:
        raise ValueError(f"n and n_boot: expected positive integers, got {n} and {n_boot}")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def bootstrap_correlation(
    estimate,
    reference,
    method: Method = "pearson",
    *,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    baseline=None,
) -> Interval:
    """Correlation of estimate (n,) with reference (n,), with a percentile bootstrap interval.

    With `baseline` (n,), the interval is for corr(estimate, reference) - corr(baseline, reference),
    resampled jointly (paired), which is how "A beats B by a margin outside the noise" is tested.
    Spearman ranks are recomputed inside every resample.
    """
    estimate, reference = _as_pair(estimate, reference)
    if baseline is not None:
        baseline, _ = _as_pair(baseline, reference)
    if not 0 < level < 1:
        raise ValueError(f"level: expected a number in (0, 1), got {level}")
    index = bootstrap_indices(reference.size, n_boot, seed)

    def statistic(values: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
        a, b = (values, reference) if rows is None else (values[rows], reference[rows])
        if method == "spearman":
            a = stats.rankdata(a, axis=-1)
            b = stats.rankdata(b, axis=-1)
        elif method != "pearson":
            raise ValueError(f"method: expected 'pearson' or 'spearman', got {method!r}")
        return _pearson_rows(np.atleast_2d(a), np.atleast_2d(b))

    point = statistic(estimate, None)[0]
    draws = statistic(estimate, index)
    if baseline is not None:
        point -= statistic(baseline, None)[0]
        draws = draws - statistic(baseline, index)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Interval(float(point), float(low), float(high))


# --------------------------------------------------------------------------------------------------
# Two-sample distances (sampling quality): MMD with an RBF bandwidth ladder, energy distance
# --------------------------------------------------------------------------------------------------


def _check_samples(x: torch.Tensor, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[0] < 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected samples of shape (n, D) with n >= 2, got {shape}")
    return x.to(torch.float64)


def _check_two_samples(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _check_samples(x, "x"), _check_samples(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(
            f"x, y: expected samples of the same dimension, got {x.shape[1]} and {y.shape[1]}"
        )
    return x, y.to(x.device)


def bandwidth_ladder(
    x: torch.Tensor, factors: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0), max_points: int = 2000
) -> torch.Tensor:
    """RBF bandwidths (len(factors),): the median pairwise distance of x (n, D) times `factors`.

    The median uses at most `max_points` samples (the first ones), in float64.
    """
    x = _check_samples(x, "x")[:max_points]
    distances = torch.cdist(x, x)
    upper = torch.triu_indices(x.shape[0], x.shape[0], offset=1, device=x.device)
    median = distances[upper[0], upper[1]].median()
    return median * torch.tensor(factors, dtype=torch.float64, device=x.device)


def mmd2_unbiased(
    x: torch.Tensor, y: torch.Tensor, bandwidths: torch.Tensor | None = None
) -> float:
    """Unbiased MMD^2 between samples x (n, D) and y (m, D), RBF kernel averaged over a ladder.

    k(a, b) = mean_h exp(-|a - b|^2 / (2 h^2)); the within-sample means leave out the diagonal, so
    the estimate is centred on 0 for equal laws and can be negative. `bandwidths` (H,) defaults to
    `bandwidth_ladder` of the pooled samples.
    """
    x, y = _check_two_samples(x, y)
    if bandwidths is None:
        bandwidths = bandwidth_ladder(torch.cat([x, y]))
    bandwidths = torch.as_tensor(bandwidths, dtype=torch.float64, device=x.device).reshape(-1)

    def kernel_mean(a: torch.Tensor, b: torch.Tensor, same: bool) -> torch.Tensor:
        squared = torch.cdist(a, b).pow(2)
        k = torch.exp(-squared[None] / (2 * bandwidths[:, None, None] ** 2)).mean(0)
        if same:
            n = a.shape[0]
            return (k.sum() - k.diagonal().sum()) / (n * (n - 1))
        return k.mean()

    value = kernel_mean(x, x, True) + kernel_mean(y, y, True) - 2 * kernel_mean(x, y, False)
    return float(value)


def mmd(x: torch.Tensor, y: torch.Tensor, bandwidths: torch.Tensor | None = None) -> float:
    """MMD = sqrt(max(MMD^2, 0)) with `mmd2_unbiased`."""
    return max(mmd2_unbiased(x, y, bandwidths), 0.0) ** 0.5


def energy_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'| of samples x (n, D) and y (m, D).

    Within-sample means leave out the diagonal (U-statistics), so equal laws give about 0.
    """
    x, y = _check_two_samples(x, y)

    def within(a: torch.Tensor) -> torch.Tensor:
        n = a.shape[0]
        return torch.cdist(a, a).sum() / (n * (n - 1))

    return float(2 * torch.cdist(x, y).mean() - within(x) - within(y))


# --------------------------------------------------------------------------------------------------
# Detection metrics (outlier detection): AUROC, AUPR, FPR at 95% TPR, with bootstrap intervals.
# Convention: a score is higher for "more in-distribution"; inliers are the positives of AUROC and
# FPR95 (the usual out-of-distribution convention), outliers the positives of AUPR (finding problems).
# --------------------------------------------------------------------------------------------------

DETECTION_METRICS = ("auroc", "aupr", "fpr95")


def _detection_pair(inliers, outliers) -> tuple[np.ndarray, np.ndarray]:
    inliers = np.asarray(inliers, dtype=np.float64).ravel()
    outliers = np.asarray(outliers, dtype=np.float64).ravel()
    if inliers.size == 0 or outliers.size == 0:
        raise ValueError("inliers and outliers: expected at least one score in each")
    if not (np.isfinite(inliers).all() and np.isfinite(outliers).all()):
        raise ValueError("inliers and outliers: expected finite scores")
    return inliers, outliers


def _auroc_rows(inliers: np.ndarray, outliers: np.ndarray) -> np.ndarray:
    """AUROC of each row: inliers (R, n), outliers (R, m) -> (R,); ties count one half."""
    n, m = inliers.shape[1], outliers.shape[1]
    ranks = stats.rankdata(np.concatenate([inliers, outliers], axis=1), axis=1)
    return (ranks[:, :n].sum(1) - n * (n + 1) / 2) / (n * m)


def _aupr_rows(inliers: np.ndarray, outliers: np.ndarray) -> np.ndarray:
    """Average precision of finding the outliers, most outlying (lowest score) first: (R,).

    AP = sum over thresholds of (recall step) x precision, tied scores forming one threshold (the
    step-wise definition of scikit-learn's average_precision_score, without interpolation).
    """
    m = outliers.shape[1]
    outlying = -np.concatenate([inliers, outliers], axis=1)
    is_outlier = np.concatenate([np.zeros_like(inliers), np.ones_like(outliers)], axis=1)
    order = np.argsort(-outlying, axis=1, kind="stable")
    ranked = np.take_along_axis(outlying, order, axis=1)
    positive = np.take_along_axis(is_outlier, order, axis=1)
    found = np.cumsum(positive, axis=1)
    precision = found / np.arange(1, ranked.shape[1] + 1)
    # every sample takes the precision at the end of its group of tied scores
    length = ranked.shape[1]
    last = np.ones_like(ranked, dtype=bool)
    last[:, :-1] = ranked[:, :-1] != ranked[:, 1:]
    ends = np.where(last, np.arange(length), length)
    group_end = np.minimum.accumulate(ends[:, ::-1], axis=1)[:, ::-1]
    return (positive * np.take_along_axis(precision, group_end, axis=1)).sum(1) / m


def _fpr_rows(inliers: np.ndarray, outliers: np.ndarray, tpr: float) -> np.ndarray:
    """Share of outliers accepted at the highest threshold that accepts `tpr` of the inliers: (R,)."""
    n = inliers.shape[1]
    keep = int(np.ceil(tpr * n - 1e-9))
    threshold = -np.sort(-inliers, axis=1)[:, max(keep, 1) - 1]
    return (outliers >= threshold[:, None]).mean(1)


def _metric_rows(name: str, inliers: np.ndarray, outliers: np.ndarray) -> np.ndarray:
    if name == "auroc":
        return _auroc_rows(inliers, outliers)
    if name == "aupr":
        return _aupr_rows(inliers, outliers)
    if name == "fpr95":
        return _fpr_rows(inliers, outliers, 0.95)
    raise ValueError(f"metrics: expected names from {DETECTION_METRICS}, got {name!r}")


def auroc(inliers, outliers) -> float:
    """Area under the ROC curve of separating inliers (n,) from outliers (m,) by a score.

    Higher scores mean "more in-distribution": 1 = every inlier above every outlier, 0.5 = chance,
    below 0.5 = the score ranks the outliers as more likely (inverted). Ties count one half.
    """
    inliers, outliers = _detection_pair(inliers, outliers)
    return float(_auroc_rows(inliers[None], outliers[None])[0])


def aupr(inliers, outliers) -> float:
    """Area under the precision-recall curve (average precision) of finding the outliers (m,)
    among inliers (n,) by ranking the lowest scores first; chance = m / (n + m)."""
    inliers, outliers = _detection_pair(inliers, outliers)
    return float(_aupr_rows(inliers[None], outliers[None])[0])


def fpr_at_tpr(inliers, outliers, tpr: float = 0.95) -> float:
    """FPR at `tpr` TPR: the share of outliers (m,) scoring at least the threshold that keeps a
    fraction `tpr` of the inliers (n,); 0 is perfect, tpr is chance for continuous scores
    (a random score accepts outliers as often as inliers)."""
    if not 0 < tpr <= 1:
        raise ValueError(f"tpr: expected a fraction in (0, 1], got {tpr}")
    inliers, outliers = _detection_pair(inliers, outliers)
    return float(_fpr_rows(inliers[None], outliers[None], tpr)[0])


def detection_metrics(
    inliers,
    outliers,
    *,
    metrics: tuple[str, ...] = DETECTION_METRICS,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Interval]:
    """{metric: Interval}: AUROC, AUPR and FPR95 of inliers (n,) vs outliers (m,) with percentile
    bootstrap intervals (inliers and outliers resampled separately, the same draws for every metric).
    """
    inliers, outliers = _detection_pair(inliers, outliers)
    if not 0 < level < 1:
        raise ValueError(f"level: expected a number in (0, 1), got {level}")
    rng = np.random.default_rng(seed)
    inlier_draws = bootstrap_indices(inliers.size, n_boot, int(rng.integers(2**31)))
    outlier_draws = bootstrap_indices(outliers.size, n_boot, int(rng.integers(2**31)))
    result = {}
    for name in metrics:
        point = _metric_rows(name, inliers[None], outliers[None])[0]
        draws = np.concatenate(
            [
                _metric_rows(
                    name, inliers[inlier_draws[i : i + 200]], outliers[outlier_draws[i : i + 200]]
                )
                for i in range(0, n_boot, 200)
            ]
        )
        low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
        result[name] = Interval(float(point), float(low), float(high))
    return result


def auroc_rows(
    inliers, outliers: dict, *, n_boot: int = 1000, seed: int = 0, **labels
) -> list[dict]:
    """One row per out-of-domain set: labels, "set", "auroc", "auroc_low", "auroc_high" (AUROC of
    inliers (n,) against the set (m_s,), higher score = inlier, with a bootstrap interval). The one
    layout of AUROC tables in the book (the detector tables add AUPR and FPR95 the same way)."""
    rows = []
    for name, values in outliers.items():
        interval = bootstrap_auroc(inliers, values, n_boot=n_boot, seed=seed)
        rows.append(
            {**labels, "set": name, "auroc": interval.estimate,
             "auroc_low": interval.low, "auroc_high": interval.high}
        )  # fmt: skip
    return rows


def bootstrap_mean_auroc(
    inliers,
    outliers: dict,
    *,
    baseline: tuple | None = None,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Mean over out-of-domain sets of AUROC(inliers (n,) vs each set (m_s,)), with a bootstrap
    interval (inliers resampled once per draw and shared by every set, each set resampled).

    baseline: (inliers, outliers) of another score of the same images; the result is then the paired
    difference of the two means (the same draws for both).
    """
    sets = list(outliers)
    if not sets:
        raise ValueError("outliers: expected at least one out-of-domain set")
    scored = [(inliers, outliers)] + ([baseline] if baseline is not None else [])
    rng = np.random.default_rng(seed)
    n_in = np.asarray(inliers).size
    rows_in = bootstrap_indices(n_in, n_boot, int(rng.integers(2**31)))
    rows_out = {
        s: bootstrap_indices(np.asarray(outliers[s]).size, n_boot, int(rng.integers(2**31)))
        for s in sets
    }

    def mean_auroc(inl, outs, pick_in, pick_out) -> np.ndarray:
        values = []
        for s in sets:
            a, b = _detection_pair(inl, outs[s])
            values.append(_metric_rows("auroc", a[pick_in], b[pick_out(s)]))
        return np.mean(values, axis=0)

    def difference(pick_in, pick_out) -> np.ndarray:
        values = [mean_auroc(inl, outs, pick_in, pick_out) for inl, outs in scored]
        return values[0] - values[1] if baseline is not None else values[0]

    point = float(difference(None, lambda s: None)[0])
    draws = np.concatenate(
        [
            difference(rows_in[i : i + 200], lambda s, i=i: rows_out[s][i : i + 200])
            for i in range(0, n_boot, 200)
        ]
    )
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return Interval(point, float(low), float(high))


def paired_difference(
    first: tuple,
    second: tuple,
    *,
    metric: str = "auroc",
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """metric(first) - metric(second) for two scores of the same samples, with a paired bootstrap.

    first, second: (inlier scores (n,), outlier scores (m,)) of two detectors on the same n inliers
    and m outliers; every resample draws the same samples for both, so the interval reflects the
    difference between the detectors, not the sampling noise they share.
    """
    (a_in, a_out), (b_in, b_out) = _detection_pair(*first), _detection_pair(*second)
    if a_in.shape != b_in.shape or a_out.shape != b_out.shape:
        raise ValueError("first and second: expected scores of the same inliers and outliers")
    rng = np.random.default_rng(seed)
    rows_in = bootstrap_indices(a_in.size, n_boot, int(rng.integers(2**31)))
    rows_out = bootstrap_indices(a_out.size, n_boot, int(rng.integers(2**31)))

    def value(inl: np.ndarray, out: np.ndarray, i, o) -> np.ndarray:
        return _metric_rows(metric, inl[i], out[o])

    point = value(a_in, a_out, None, None)[0] - value(b_in, b_out, None, None)[0]
    draws = np.concatenate(
        [
            value(a_in, a_out, rows_in[i : i + 200], rows_out[i : i + 200])
            - value(b_in, b_out, rows_in[i : i + 200], rows_out[i : i + 200])
            for i in range(0, n_boot, 200)
        ]
    )
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(point), float(low), float(high))


def bootstrap_auroc(
    inliers, outliers, n_boot: int = 1000, seed: int = 0, level: float = 0.95
) -> Interval:
    """AUROC with a percentile bootstrap interval (inliers and outliers resampled separately)."""
    intervals = detection_metrics(
        inliers, outliers, metrics=("auroc",), n_boot=n_boot, level=level, seed=seed
    )
    return intervals["auroc"]
