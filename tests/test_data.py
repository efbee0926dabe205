"""GaussianMixture: exact normalised density, score, sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from jepabook.data import GaussianMixture


def scipy_log_prob(mixture: GaussianMixture, x: np.ndarray) -> np.ndarray:
    parts = [
        np.log(w) + stats.multivariate_normal(m, c).logpdf(x)
        for w, m, c in zip(
            mixture.weights.numpy(), mixture.means.numpy(), mixture.covariances.numpy(), strict=True
        )
    ]
    return np.logaddexp.reduce(np.stack(parts), axis=0)


@pytest.mark.parametrize("covariance", ["full", "isotropic"])
def test_log_prob_matches_scipy(covariance):
    mixture = GaussianMixture.random(3, 4, seed=1, covariance=covariance)
    x = mixture.sample(50, seed=2).double()
    np.testing.assert_allclose(
        mixture.log_prob(x).numpy(), scipy_log_prob(mixture, x.numpy()), rtol=1e-10
    )


def test_density_integrates_to_one_in_1d():
    mixture = GaussianMixture.random(1, 3, seed=3)
    total, _ = integrate.quad(
        lambda t: float(mixture.log_prob(torch.tensor([[t]], dtype=torch.float64)).exp()),
        -30,
        30,
        limit=200,
    )
    assert abs(total - 1) < 1e-8


def test_density_integrates_to_one_in_2d():
    mixture = GaussianMixture.random(2, 4, seed=4)
    grid = torch.linspace(-8, 8, 801, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    density = mixture.log_prob(torch.stack([xx.flatten(), yy.flatten()], 1)).exp().reshape(801, 801)
    step = float(grid[1] - grid[0])
    assert abs(float(torch.trapezoid(torch.trapezoid(density, dx=step), dx=step)) - 1) < 1e-6


def test_monte_carlo_expectation_of_inverse_density_is_the_volume():
    """E_p[1/p(X) 1{X in box}] = volume(box): a check of normalisation from samples alone."""
    mixture = GaussianMixture.random(2, 3, seed=5)
    x = mixture.sample(200_000, seed=6).double()
    centre = mixture.means[mixture.weights.argmax()]
    inside = ((x - centre).abs() <= 0.5).all(1)  # a unit box where the mixture has mass
    terms = inside / mixture.log_prob(x).exp()
    estimate, standard_error = float(terms.mean()), float(terms.std() / len(terms) ** 0.5)
    assert standard_error < 0.02
    assert abs(estimate - 1.0) < 4 * standard_error


def test_score_is_the_gradient_of_log_prob():
    mixture = GaussianMixture.random(4, 5, seed=7)
    x = mixture.sample(20, seed=8).double().requires_grad_(True)
    (autograd,) = torch.autograd.grad(mixture.log_prob(x).sum(), x)
    torch.testing.assert_close(mixture.score(x.detach()), autograd, rtol=1e-9, atol=1e-10)


def test_samples_have_the_mixture_moments():
    mixture = GaussianMixture.random(2, 3, seed=9)
    x = mixture.sample(100_000, seed=10).double()
    mean = (mixture.weights[:, None] * mixture.means).sum(0)
    outer = mixture.means[:, :, None] * mixture.means[:, None, :]
    second = (mixture.weights[:, None, None] * (mixture.covariances + outer)).sum(0)
    covariance = second - mean[:, None] * mean[None, :]
    torch.testing.assert_close(x.mean(0), mean, atol=0.02, rtol=0)
    torch.testing.assert_close(torch.cov(x.T), covariance, atol=0.03, rtol=0)


def test_random_is_repeatable_and_varied():
    a, b, c = (GaussianMixture.random(8, 5, seed=s) for s in (0, 0, 1))
    torch.testing.assert_close(a.means, b.means)
    torch.testing.assert_close(a.sample(10, seed=3), b.sample(10, seed=3))
    assert not torch.allclose(a.means, c.means)
    assert a.weights.max() / a.weights.min() > 1.2  # unequal weights
    scales = torch.linalg.eigvalsh(a.covariances).sqrt()
    assert scales.min() >= 0.4 - 1e-9 and scales.max() <= 1.0 + 1e-9


def test_components_overlap_partially_at_every_dimension():
    for dim in (2, 16, 64):
        mixture = GaussianMixture.random(dim, 5, seed=0)
        gaps = torch.cdist(mixture.means, mixture.means)[torch.triu_indices(5, 5, 1).unbind()]
        assert 1.0 < float(gaps.median()) < 6.0


def test_bad_inputs_are_named():
    mixture = GaussianMixture.random(2, 2)
    with pytest.raises(ValueError, match=r"x: expected shape \(n, 2\)"):
        mixture.log_prob(torch.zeros(3, 5))
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(torch.tensor([1.0, -1.0]), torch.zeros(2, 2), torch.eye(2).repeat(2, 1, 1))
    with pytest.raises(ValueError, match="covariances"):
        GaussianMixture(torch.ones(2), torch.zeros(2, 2), torch.eye(3).repeat(2, 1, 1))
    with pytest.raises(ValueError, match="covariance"):
        GaussianMixture.random(2, 2, covariance="diagonal")
