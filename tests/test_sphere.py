"""Lemma 1 (jepabook.sphere): exact chi_K laws, the projection law, the sampler and the tests."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate, stats

from jepabook.chapters import lemma1_sphere as sphere


@pytest.mark.parametrize("k", [2, 3, 5, 17, 40, 63, 64, 65, 200])
def test_exact_mean_and_std_match_scipy_chi(k):
    chi = stats.chi(k)
    assert sphere.mean_scaled_norm(k) == pytest.approx(chi.mean() / np.sqrt(k), rel=1e-11)
    assert sphere.std_scaled_norm(k) == pytest.approx(chi.std() / np.sqrt(k), rel=1e-9)


@pytest.mark.parametrize("k", [64, 1000, 4096, 65536, 2**20])
def test_exact_std_matches_high_precision_at_large_k(k):
    """Where gammaln differences cancel (K >= 1e4 loses ~1e-6 of the variance), the series holds."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 40
    big = mp.mpf(k)
    mean = mp.sqrt(2 / big) * mp.gamma((big + 1) / 2) / mp.gamma(big / 2)
    assert sphere.mean_scaled_norm(k) == pytest.approx(float(mean), rel=1e-14)
    assert sphere.std_scaled_norm(k) == pytest.approx(float(mp.sqrt(1 - mean**2)), rel=1e-12)


def test_std_approaches_the_asymptote_as_one_minus_one_over_8k():
    k = 2.0 ** np.arange(6, 21)
    gap = 1 - sphere.std_scaled_norm(k) / sphere.asymptotic_std(k)
    np.testing.assert_allclose(gap * 8 * k, 1.0, atol=0.01)
    assert np.all(np.diff(gap) < 0)  # the asymptote is approached monotonically from below
    assert sphere.std_scaled_norm(2) == pytest.approx(0.46325, abs=1e-5)  # 7% under 1/sqrt(4)


def test_exact_std_agrees_with_a_big_monte_carlo():
    rng = np.random.default_rng(0)
    k, n = 5, 400_000
    x = np.linalg.norm(rng.standard_normal((n, k)), axis=1) / np.sqrt(k)
    sigma = sphere.std_scaled_norm(k)
    se = sigma * np.sqrt((2 + sphere.excess_kurtosis_scaled_norm(k)) / (4 * n))
    assert abs(x.std(ddof=1) - sigma) < 4 * se
    assert abs(x.mean() - sphere.mean_scaled_norm(k)) < 4 * sigma / np.sqrt(n)
    # the asymptote is far outside the error bars at this K: the exact value is needed
    assert abs(x.std(ddof=1) - sphere.asymptotic_std(k)) > 20 * se


@pytest.mark.parametrize("k", [2, 3, 10, 50])
def test_excess_kurtosis_matches_scipy_at_small_k(k):
    expected = float(stats.chi(k).stats(moments="k"))
    assert sphere.excess_kurtosis_scaled_norm(k) == pytest.approx(expected, rel=1e-6, abs=1e-12)


def test_scaled_norm_density_integrates_to_one_and_has_the_exact_mean():
    for k in (2, 9, 300):
        pdf = lambda x, k=k: sphere.scaled_norm_density(x, k)  # noqa: E731
        total = integrate.quad(pdf, 0, 8, points=[1.0], limit=200)[0]
        mean = integrate.quad(lambda x, pdf=pdf: x * pdf(x), 0, 8, points=[1.0], limit=200)[0]
        assert total == pytest.approx(1, abs=1e-8)
        assert mean == pytest.approx(sphere.mean_scaled_norm(k), abs=1e-8)


@pytest.mark.parametrize("k", [3, 4, 7, 64, 1000])
def test_projection_density_integrates_to_one_and_matches_scipy(k):
    total = integrate.quad(lambda t: np.exp(sphere.projection_log_density(t, k)), -1, 1, limit=200)[
        0
    ]
    assert total == pytest.approx(1, abs=1e-7)
    t = np.linspace(-0.99, 0.99, 101)
    np.testing.assert_allclose(
        sphere.projection_log_density(t, k),
        sphere.projection_law(k).logpdf(t),
        rtol=1e-10,
        atol=1e-10,
    )
    assert np.all(np.isneginf(sphere.projection_log_density(np.array([-1.5, 1.5]), k)))


def test_projection_law_special_cases():
    t = np.linspace(-0.9, 0.9, 7)
    np.testing.assert_allclose(sphere.projection_law(3).pdf(t), 0.5)  # Archimedes: uniform
    np.testing.assert_allclose(sphere.projection_law(2).pdf(t), 1 / (np.pi * np.sqrt(1 - t**2)))
    assert sphere.projection_law(1000).std() == pytest.approx(1 / np.sqrt(1000), rel=1e-12)


def test_random_directions_are_unit_and_repeatable():
    v = sphere.fixed_directions(50, 6, seed=3)
    assert v.shape == (50, 6)
    np.testing.assert_allclose(np.linalg.norm(v.numpy(), axis=0), 1, rtol=1e-12)
    np.testing.assert_array_equal(v.numpy(), sphere.fixed_directions(50, 6, seed=3).numpy())
    assert not np.allclose(v.numpy(), sphere.fixed_directions(50, 6, seed=4).numpy())


def test_sampler_shapes_repeatability_and_bad_input():
    r, p = sphere.norms_and_projections("gaussian", 300, 20, n_directions=5, seed=1)
    assert r.shape == (300,) and p.shape == (300, 5) and r.dtype == p.dtype == np.float64
    r2, p2 = sphere.norms_and_projections("gaussian", 300, 20, n_directions=5, seed=1)
    np.testing.assert_array_equal(r, r2)
    np.testing.assert_array_equal(p, p2)
    r3, _ = sphere.norms_and_projections("gaussian", 300, 20, n_directions=5, seed=2)
    assert not np.allclose(r, r3)
    with pytest.raises(ValueError, match="law"):
        sphere.norms_and_projections("uniform", 10, 20)
    with pytest.raises(ValueError, match="k"):
        sphere.norms_and_projections("gaussian", 10, 1)
    with pytest.raises(ValueError, match="n"):
        sphere.norms_and_projections("gaussian", 0, 4)


def test_tiny_chunks_give_the_same_law():
    """chunk_floats=1 draws one row at a time; the law (not the stream) must be unchanged."""
    r, p = sphere.norms_and_projections("gaussian", 3000, 16, seed=5, chunk_floats=1)
    summary = sphere.summarize_norms(r, 16)
    assert abs(summary.z_mean) < 4 and abs(summary.z_std) < 4
    assert sphere.uniformity_test(p, 16).combined_p > 1e-3


@pytest.mark.parametrize("k", [2, 8, 128])
def test_gaussian_passes_every_check(k):
    r, p = sphere.norms_and_projections("gaussian", 4000, k, seed=0)
    summary = sphere.summarize_norms(r, k)
    assert abs(summary.z_mean) < 4 and abs(summary.z_std) < 4
    assert sphere.uniformity_test(p, k).combined_p > 1e-3
    assert sphere.independence_test(r, p).combined_p > 1e-3


@pytest.mark.parametrize("k", [2, 8, 128])
def test_the_controls_are_caught(k):
    r, p = sphere.norms_and_projections("anisotropic", 2000, k, seed=0)
    assert sphere.uniformity_test(p, k).combined_p < 1e-6
    assert sphere.independence_test(r, p).combined_p < 1e-6
    r, p = sphere.norms_and_projections("coupled", 2000, k, seed=0)
    summary = sphere.summarize_norms(r, k)  # the coupled control's radius is exactly chi_K ...
    assert abs(summary.z_mean) < 4 and abs(summary.z_std) < 4
    assert sphere.independence_test(r, p).combined_p < 1e-6  # ... but its direction follows it


def test_uniformity_test_rejects_the_wrong_dimension():
    """Uniform directions in R^16 tested against the law for R^12: the KS test must see it."""
    _, p = sphere.norms_and_projections("gaussian", 4000, 16, seed=0)
    assert sphere.uniformity_test(p, 12).combined_p < 1e-6


def test_independence_test_is_a_valid_test_under_the_null():
    """Independent inputs: p-values over 200 repetitions are roughly uniform (5% rejections)."""
    rng = np.random.default_rng(1)
    p = [
        sphere.independence_test(rng.random(200), rng.standard_normal((200, 1))).p_values[0]
        for _ in range(200)
    ]
    assert stats.kstest(p, "uniform").pvalue > 1e-3
    with pytest.raises(ValueError, match="projections"):
        sphere.independence_test(np.ones(5), np.ones((4, 2)))


def test_combined_p_is_bonferroni():
    test = sphere.DirectionTest(statistics=np.zeros(4), p_values=np.array([0.5, 0.01, 0.2, 0.9]))
    assert test.combined_p == pytest.approx(0.04)
    assert sphere.DirectionTest(np.zeros(2), np.array([0.7, 0.9])).combined_p == 1.0


def test_excess_kurtosis_at_large_k_matches_high_precision():
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 60
    for k in (4096, 65536):
        big = mp.mpf(k)
        mean = mp.sqrt(2) * mp.gamma((big + 1) / 2) / mp.gamma(big / 2)
        m4 = big * (big + 2) - 4 * mean**2 * (big + 1) + 6 * mean**2 * big - 3 * mean**4
        expected = float(m4 / (big - mean**2) ** 2 - 3)
        assert sphere.excess_kurtosis_scaled_norm(k) == pytest.approx(expected, abs=1e-15 * k)


def test_chapter_helpers_and_figures_run_on_a_small_experiment():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    checks = sphere.check_all([2, 16], 500, n_directions=3, seed=0, progress=False)
    assert set(checks) == {(law, k) for law in sphere.LAWS for k in (2, 16)}
    radius = sphere.radius_rows(checks)
    assert [row["K"] for row in radius] == [2, 16]
    assert radius[1]["exact logN std"] == pytest.approx(np.sqrt(8))
    directions = sphere.direction_rows(checks)
    assert len(directions) == 2 and len(directions[0]) == 1 + 2 * len(sphere.LAWS)
    fig, axes = plt.subplots(2, 4)
    sphere.plot_radius_densities(axes[0, 0], checks, [2, 16])
    sphere.plot_std_vs_k(axes[0, 1], checks)
    sphere.plot_std_ratio(axes[0, 2], checks)
    sphere.plot_projection(axes[0, 3], checks, 2, scaled=False)
    sphere.plot_projection(axes[1, 0], checks, 16, scaled=True, laws_in_legend=False)
    sphere.plot_p_values(axes[1, 1], checks, "uniformity")
    sphere.plot_norm_vs_projection(axes[1, 2], checks, 16)
    sphere.plot_rank_correlations(axes[1, 3], checks)
    assert all(ax.has_data() for ax in axes.flat)
    plt.close(fig)
