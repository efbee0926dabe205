"""AUROC, AUPR and FPR at 95% TPR with bootstrap intervals (jepabook.metrics), against hand-computed
cases and scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from jepabook.metrics import aupr, auroc, detection_metrics, fpr_at_tpr


def scores(n: int, m: int, shift: float, seed: int = 0, decimals: int | None = None):
    rng = np.random.default_rng(seed)
    inliers, outliers = rng.normal(shift, 1, n), rng.normal(0, 1, m)
    if decimals is not None:  # rounding makes ties
        inliers, outliers = inliers.round(decimals), outliers.round(decimals)
    return inliers, outliers


def sklearn_values(inliers, outliers) -> tuple[float, float, float]:
    """AUROC (inliers positive), AP of the outliers ranked by -score, FPR at the first TPR >= 0.95."""
    y_in = np.r_[np.ones(len(inliers)), np.zeros(len(outliers))]
    s = np.r_[inliers, outliers]
    fpr, tpr, _ = roc_curve(y_in, s, drop_intermediate=False)
    return (
        roc_auc_score(y_in, s),
        average_precision_score(1 - y_in, -s),
        fpr[np.searchsorted(tpr, 0.95 - 1e-12)],
    )


@pytest.mark.parametrize("decimals", [None, 1, 0])
@pytest.mark.parametrize(("n", "m", "shift"), [(200, 50, 1.0), (37, 300, 0.3), (20, 20, -0.5)])
def test_metrics_equal_scikit_learn_with_and_without_ties(n, m, shift, decimals):
    inliers, outliers = scores(n, m, shift, seed=n + m, decimals=decimals)
    expected = sklearn_values(inliers, outliers)
    got = (auroc(inliers, outliers), aupr(inliers, outliers), fpr_at_tpr(inliers, outliers))
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_hand_computed_cases():
    # inliers 3, 4, 5, 6 vs outliers 1, 2, 3.5: only the pair (3, 3.5) of 12 has the outlier above
    assert auroc([3, 4, 5, 6], [1, 2, 3.5]) == pytest.approx(11 / 12)
    # ranking lowest first: 1 (out), 2 (out), 3 (in), 3.5 (out): AP = (1 + 1 + 3/4) / 3
    assert aupr([3, 4, 5, 6], [1, 2, 3.5]) == pytest.approx((1 + 1 + 0.75) / 3)
    # keeping 95% of 20 inliers 1..20 needs the threshold 2: outliers 0, 1.5, 2, 7 -> 2 of 4 accepted
    assert fpr_at_tpr(np.arange(1.0, 21), [0, 1.5, 2, 7]) == 0.5
    assert auroc([1, 1], [1, 1]) == 0.5 and aupr([1, 1], [1, 1]) == 0.5
    assert fpr_at_tpr([1, 1], [1, 1]) == 1.0
    assert (auroc([5, 6], [1, 2]), aupr([5, 6], [1, 2]), fpr_at_tpr([5, 6], [1, 2])) == (1, 1, 0)
    # inverted: both outliers come last, at precisions 1/3 and 2/4
    assert (auroc([1, 2], [5, 6]), aupr([1, 2], [5, 6]), fpr_at_tpr([1, 2], [5, 6])) == (
        0,
        pytest.approx(5 / 12),
        1,
    )


def test_chance_levels_and_separation():
    same_in, same_out = scores(3000, 1000, 0.0)
    assert auroc(same_in, same_out) == pytest.approx(0.5, abs=0.03)
    assert aupr(same_in, same_out) == pytest.approx(0.25, abs=0.03)  # the share of outliers
    assert fpr_at_tpr(same_in, same_out) == pytest.approx(0.95, abs=0.02)
    far_in, far_out = scores(3000, 1000, 3.0)
    assert auroc(far_in, far_out) > 0.97 and fpr_at_tpr(far_in, far_out) < 0.25


def test_bootstrap_intervals_cover_the_population_values_and_shrink_with_n():
    # population AUROC of N(1, 1) vs N(0, 1): Phi(1 / sqrt(2))
    true_auroc = 0.7602499389065233
    small = detection_metrics(*scores(100, 100, 1.0, seed=3), n_boot=400)
    large = detection_metrics(*scores(2000, 2000, 1.0, seed=3), n_boot=400)
    for intervals in (small, large):
        assert set(intervals) == {"auroc", "aupr", "fpr95"}
        for interval in intervals.values():
            assert interval.low <= interval.estimate <= interval.high
        assert intervals["auroc"].low < true_auroc < intervals["auroc"].high
    width = {k: (v.high - v.low) for k, v in small.items()}
    assert all(large[k].high - large[k].low < 0.4 * width[k] for k in width)


def test_bootstrap_is_repeatable_and_shared_with_bootstrap_auroc():
    from jepabook.metrics import bootstrap_auroc

    inliers, outliers = scores(150, 80, 0.7)
    first = detection_metrics(inliers, outliers, n_boot=300, seed=5)
    assert first == detection_metrics(inliers, outliers, n_boot=300, seed=5)
    assert bootstrap_auroc(inliers, outliers, n_boot=300, seed=5) == first["auroc"]
    assert first != detection_metrics(inliers, outliers, n_boot=300, seed=6)


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="inliers and outliers"):
        auroc([], [1.0])
    with pytest.raises(ValueError, match="finite"):
        aupr([1.0, np.nan], [0.0])
    with pytest.raises(ValueError, match="tpr"):
        fpr_at_tpr([1.0], [0.0], tpr=1.5)
    with pytest.raises(ValueError, match="level"):
        detection_metrics([1.0], [0.0], level=95)
    with pytest.raises(ValueError, match="metrics"):
        detection_metrics([1.0], [0.0], metrics=("accuracy",))


def test_paired_difference_separates_a_better_detector_and_not_itself():
    from jepabook.metrics import paired_difference

    rng = np.random.default_rng(2)
    truth_in, truth_out = rng.normal(1.0, 1, 400), rng.normal(0, 1, 300)
    good = (truth_in, truth_out)
    noisy = (truth_in + rng.normal(0, 1.5, 400), truth_out + rng.normal(0, 1.5, 300))
    gap = paired_difference(good, noisy, n_boot=400)
    assert gap.low > 0 and gap.estimate == pytest.approx(auroc(*good) - auroc(*noisy))
    same = paired_difference(good, good, n_boot=50)
    assert same.estimate == same.low == same.high == 0
    fpr_gap = paired_difference(good, noisy, metric="fpr95", n_boot=200)
    assert fpr_gap.high < 0  # the better detector accepts fewer outliers
    with pytest.raises(ValueError, match="same inliers and outliers"):
        paired_difference(good, (truth_in[:10], truth_out), n_boot=10)
