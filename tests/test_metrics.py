"""Correlations with bootstrap confidence intervals (jepabook.metrics)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from jepabook.metrics import Interval, bootstrap_correlation, bootstrap_indices, correlation, sides


def noisy(n: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=n)
    return truth + noise * rng.normal(size=n), truth


def test_correlation_matches_scipy_and_spearman_sees_only_ranks():
    a, b = noisy(500, 0.7)
    assert correlation(a, b) == pytest.approx(stats.pearsonr(a, b)[0], rel=1e-12)
    assert correlation(a, b, "spearman") == pytest.approx(stats.spearmanr(a, b)[0], rel=1e-12)
    assert correlation(np.exp(a), b, "spearman") == pytest.approx(correlation(a, b, "spearman"))
    assert correlation(np.exp(3 * a), b) < correlation(a, b) - 0.1  # Pearson is not rank-only
    assert correlation(np.ones(10), np.arange(10.0)) == 0.0


def test_bootstrap_interval_covers_the_estimate_and_shrinks_with_n():
    small = bootstrap_correlation(*noisy(200, 1.0), n_boot=300)
    large = bootstrap_correlation(*noisy(5000, 1.0), n_boot=300)
    for interval in (small, large):
        assert interval.low < interval.estimate < interval.high
        assert interval.low < 1 / np.sqrt(2) < interval.high  # the population value
    assert (large.high - large.low) < 0.4 * (small.high - small.low)


def test_paired_difference_separates_a_better_estimate_and_not_an_equal_one():
    rng = np.random.default_rng(1)
    truth = rng.normal(size=1000)
    good, bad = truth + 0.3 * rng.normal(size=1000), truth + 1.0 * rng.normal(size=1000)
    gap = bootstrap_correlation(good, truth, baseline=bad, n_boot=300)
    assert gap.excludes(0.0) and gap.low > 0
    same = bootstrap_correlation(good, truth, baseline=good, n_boot=50)
    assert same.estimate == 0 and same.low == same.high == 0
    shuffled = bootstrap_correlation(rng.permutation(good), truth, n_boot=300)
    assert not shuffled.excludes(0.0)


def test_bootstrap_is_repeatable_and_intervals_print():
    a, b = noisy(300, 0.5)
    first = bootstrap_correlation(a, b, "spearman", n_boot=100, seed=3)
    assert first == bootstrap_correlation(a, b, "spearman", n_boot=100, seed=3)
    assert isinstance(first, Interval) and str(first).count("[") == 1
    assert bootstrap_indices(7, 4, seed=0).shape == (4, 7)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="a and b"):
        correlation(np.zeros(5), np.zeros(6))
    with pytest.raises(ValueError, match="sample 2"):
        correlation(np.array([1.0, 2.0, np.nan, 4.0]), np.arange(4.0))
    with pytest.raises(ValueError, match="method"):
        correlation(np.arange(4.0), np.arange(4.0), "kendall")
    with pytest.raises(ValueError, match="level"):
        bootstrap_correlation(np.arange(4.0), np.arange(4.0), level=95)


def test_sides_sorts_intervals_by_where_they_lie_against_a_value():
    found = sides(
        {"a": Interval(0.8, 0.7, 0.9), "b": Interval(0.2, 0.1, 0.3), "c": Interval(0.5, 0.4, 0.6)}
    )
    assert found == {"above": ["a"], "below": ["b"], "across": ["c"]}
