"""Exact maps: inverses, Jacobians, the Rosenblatt map and the change-of-variables identity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import special, stats
from torch.func import jacrev, vmap

from jepabook import jepa_score
from jepabook.data import GaussianMixture
from jepabook.flows import (
    Affine,
    AffineCoupling,
    Chain,
    NormalCDF,
    RadialAngularLaw,
    RadialGaussianizer,
    RosenblattMap,
    banana_flow,
    circle_coarea_integral,
    histogram_chi_square,
    log_ndtr,
    log_standard_normal,
    ndtri_from_logs,
    polygon_area,
    warp_grid,
)


def random_chain(dim: int, seed: int) -> Chain:
    g = torch.Generator().manual_seed(seed)
    matrix = torch.eye(dim, dtype=torch.float64) + 0.4 * torch.randn(
        dim, dim, generator=g, dtype=torch.float64
    )
    half = list(range(dim // 2))
    rest = list(range(dim // 2, dim))
    return Chain(
        Affine(matrix, torch.randn(dim, generator=g, dtype=torch.float64)),
        AffineCoupling.random(dim, rest, seed=seed + 1),
        AffineCoupling.random(dim, half, seed=seed + 2),
    )


def autograd_logdet(f, x: torch.Tensor) -> torch.Tensor:
    """(n,) log|det| of per-sample Jacobians by autograd."""
    J = vmap(jacrev(lambda v: f(v[None])[0]))(x)
    return torch.linalg.slogdet(J).logabsdet


def gaussian_samples(n: int, dim: int, seed: int) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


BIJECTIONS = {
    "banana": lambda: (banana_flow(), 2),
    "chain4": lambda: (random_chain(4, seed=3), 4),
    "rosenblatt1": lambda: (RosenblattMap(GaussianMixture.random(1, 3, seed=1)), 1),
    "rosenblatt2": lambda: (RosenblattMap(GaussianMixture.random(2, 4, seed=2)), 2),
    "rosenblatt4": lambda: (RosenblattMap(GaussianMixture.random(4, 5, seed=3)), 4),
}


@pytest.mark.parametrize("name", BIJECTIONS)
def test_inverses_are_inverses(name):
    f, dim = BIJECTIONS[name]()
    z = 1.5 * gaussian_samples(300, dim, seed=0)
    x = f.inverse(z)
    torch.testing.assert_close(f(x), z, rtol=0, atol=1e-9)
    torch.testing.assert_close(f.inverse(f(x)), x, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name", BIJECTIONS)
def test_closed_form_log_determinants_match_autograd(name):
    f, dim = BIJECTIONS[name]()
    x = f.inverse(gaussian_samples(200, dim, seed=1))
    closed = f.log_abs_det_jacobian(x)
    torch.testing.assert_close(closed, autograd_logdet(f, x), rtol=0, atol=1e-9)
    torch.testing.assert_close(closed, jepa_score(f, x), rtol=0, atol=1e-8)


@pytest.mark.parametrize("name", ["banana", "chain4"])
def test_generator_log_determinant_is_closed_form_and_independent(name):
    f, dim = BIJECTIONS[name]()
    z = gaussian_samples(200, dim, seed=2)
    torch.testing.assert_close(
        f.inverse_log_abs_det_jacobian(z), autograd_logdet(f.inverse, z), rtol=0, atol=1e-10
    )


def test_nonlinear_flows_have_varying_jacobians():
    """A constant log-determinant would make the change-of-variables checks vacuous."""
    for name in ("banana", "rosenblatt2"):
        f, dim = BIJECTIONS[name]()
        assert f.log_abs_det_jacobian(f.inverse(gaussian_samples(500, dim, seed=3))).std() > 0.1


@pytest.mark.parametrize(("dim", "components"), [(1, 3), (2, 4), (4, 5)])
def test_rosenblatt_pushes_the_mixture_onto_a_standard_normal(dim, components):
    mixture = GaussianMixture.random(dim, components, seed=dim)
    z = RosenblattMap(mixture)(mixture.sample(20_000, seed=4).double())
    direction = torch.ones(dim, dtype=torch.float64) / math.sqrt(
        dim
    )  # a projection sees dependence
    for column in [*z.T, z @ direction]:
        assert stats.kstest(column.numpy(), "norm").pvalue > 1e-3
    torch.testing.assert_close(z.mean(0), torch.zeros(dim, dtype=torch.float64), rtol=0, atol=0.04)
    covariance = torch.cov(z.T).reshape(dim, dim)
    torch.testing.assert_close(covariance, torch.eye(dim, dtype=torch.float64), rtol=0, atol=0.05)


def test_the_map_of_another_mixture_does_not_gaussianise():
    """The KS check above can fail: the Rosenblatt map of a different law leaves a non-Gaussian code."""
    law, other = GaussianMixture.random(2, 4, seed=2), GaussianMixture.random(2, 4, seed=7)
    z = RosenblattMap(other)(law.sample(20_000, seed=5).double())
    assert min(stats.kstest(column.numpy(), "norm").pvalue for column in z.T) < 1e-6


@pytest.mark.parametrize(("dim", "components"), [(1, 3), (2, 4), (4, 5), (6, 3)])
def test_change_of_variables_identity_for_the_rosenblatt_map(dim, components):
    mixture = GaussianMixture.random(dim, components, seed=10 + dim)
    f = RosenblattMap(mixture)
    x = mixture.sample(1000, seed=6).double()
    score = jepa_score(f, x)
    log_p = mixture.log_prob(x)
    np.testing.assert_allclose(score + log_standard_normal(f(x)), log_p, rtol=0, atol=1e-8)
    torch.testing.assert_close(f.log_conditional_densities(x).sum(1), log_p, rtol=0, atol=1e-10)
    # Each wrong variant is off by far more than the tolerance.
    assert (score - log_p).abs().max() > 0.5
    assert (-score + log_standard_normal(f(x)) - log_p).abs().max() > 0.5


def test_change_of_variables_identity_for_the_banana_flow():
    f = banana_flow()
    z = gaussian_samples(2000, 2, seed=7)
    x = f.inverse(z)
    independent = log_standard_normal(z) - f.inverse_log_abs_det_jacobian(z)
    via_score = log_standard_normal(f(x)) + jepa_score(f, x)
    np.testing.assert_allclose(via_score, independent, rtol=0, atol=1e-10)


def test_uniformising_encoder_scores_the_log_density_itself():
    mixture = GaussianMixture.random(3, 4, seed=8)
    x = mixture.sample(500, seed=9).double()
    f = Chain(RosenblattMap(mixture), NormalCDF(3))
    np.testing.assert_allclose(jepa_score(f, x), mixture.log_prob(x), rtol=0, atol=1e-8)


def test_single_gaussian_gives_a_constant_score():
    covariance = torch.tensor([[[2.0, 0.6], [0.6, 0.5]]], dtype=torch.float64)
    gaussian = GaussianMixture(torch.ones(1), torch.tensor([[1.0, -1.0]]), covariance)
    x = gaussian.sample(300, seed=10).double()
    expected = -0.5 * float(torch.logdet(covariance[0]))
    np.testing.assert_allclose(jepa_score(RosenblattMap(gaussian), x), expected, rtol=0, atol=1e-10)


def test_rosenblatt_is_accurate_far_in_the_tails():
    mixture = GaussianMixture.random(2, 3, seed=2)
    f = RosenblattMap(mixture)
    x = torch.tensor([[30.0, -40.0], [-50.0, 60.0], [200.0, 0.0], [0.0, 1e3]], dtype=torch.float64)
    z = f(x)
    assert torch.isfinite(z).all() and z.abs().max() > 100
    np.testing.assert_allclose(
        jepa_score(f, x) + log_standard_normal(z), mixture.log_prob(x), rtol=1e-12, atol=1e-9
    )
    torch.testing.assert_close(f.inverse(z), x, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("z", [-60.0, -38.5, -8.0, -1.0, 0.0, 1.0, 8.0, 38.5, 60.0])
def test_ndtri_from_logs_inverts_both_tails(z):
    z = torch.tensor([z], dtype=torch.float64)
    recovered = ndtri_from_logs(torch.special.log_ndtr(z), torch.special.log_ndtr(-z))
    torch.testing.assert_close(recovered, z, rtol=1e-12, atol=1e-12)
    assert abs(float(special.ndtr(recovered.item())) - float(special.ndtr(z.item()))) < 1e-15


def test_log_ndtr_matches_torch_in_value_and_gradient():
    x = torch.cat([-torch.logspace(-3, 3, 400, dtype=torch.float64), torch.zeros(1, dtype=torch.float64),
                   torch.logspace(-3, 1.5, 400, dtype=torch.float64)]).requires_grad_(True)  # fmt: skip
    ours, reference = log_ndtr(x), torch.special.log_ndtr(x)
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-300)
    (g_ours,) = torch.autograd.grad(ours.sum(), x)
    (g_reference,) = torch.autograd.grad(reference.sum(), x)
    torch.testing.assert_close(g_ours, g_reference, rtol=1e-9, atol=0)


def test_gradient_is_right_at_the_median_level():
    """At the median both tails have log-probability log(1/2); the derivative must not vanish there."""
    f = RadialGaussianizer(1.3)
    r = f.level_radius(torch.zeros(1))
    x = torch.cat([r, torch.zeros(1, dtype=torch.float64)])[None]
    assert abs(float(f(x))) < 1e-12
    torch.testing.assert_close(jepa_score(f, x), f.log_gradient_norm(x), rtol=0, atol=1e-12)


def test_radial_law_without_modulation_is_the_isotropic_gaussian():
    scale = 0.7
    covariance = scale**2 * torch.eye(2, dtype=torch.float64)[None]
    gaussian = GaussianMixture(torch.ones(1), torch.zeros(1, 2), covariance)
    x = gaussian.sample(200, seed=11).double()
    radial = RadialAngularLaw(scale, 0.0).log_prob(x)
    torch.testing.assert_close(radial, gaussian.log_prob(x), rtol=0, atol=1e-12)


def test_radial_angular_law_samples_its_density():
    a = 0.8
    law = RadialAngularLaw(1.2, a)
    x = law.sample(20_000, seed=12)
    theta = torch.atan2(x[:, 1], x[:, 0]).remainder(2 * math.pi).numpy()
    cdf = lambda t: (t + a * np.sin(t)) / (2 * math.pi)  # noqa: E731
    assert stats.kstest(theta, cdf).pvalue > 1e-3
    assert stats.kstest(theta, stats.uniform(0, 2 * math.pi).cdf).pvalue < 1e-6  # not uniform
    assert stats.kstest(x.norm(dim=1).numpy(), stats.rayleigh(scale=1.2).cdf).pvalue > 1e-3
    grid = torch.linspace(-9, 9, 601, dtype=torch.float64)
    xx, yy = torch.meshgrid(grid, grid, indexing="ij")
    density = law.log_prob(torch.stack([xx.flatten(), yy.flatten()], 1)).exp()
    assert abs(float(density.sum()) * float(grid[1] - grid[0]) ** 2 - 1) < 1e-4


def test_level_set_laws_push_forward_alike_and_share_every_score():
    law_a, law_b = RadialAngularLaw(1.0, 0.0), RadialAngularLaw(1.0, 0.7)
    f_a, f_b = RadialGaussianizer(law_a.scale), RadialGaussianizer(law_b.scale)
    for law, f in ((law_a, f_a), (law_b, f_b)):
        codes = f(law.sample(20_000, seed=13)).squeeze(1)
        assert stats.kstest(codes.numpy(), "norm").pvalue > 1e-3
    x = torch.cat([law_a.sample(500, seed=14), law_b.sample(500, seed=15)])
    score_a, score_b = jepa_score(f_a, x), jepa_score(f_b, x)
    torch.testing.assert_close(score_a, score_b, rtol=0, atol=1e-12)
    torch.testing.assert_close(score_a, f_a.log_gradient_norm(x), rtol=0, atol=1e-10)
    assert (law_a.log_prob(x) - law_b.log_prob(x)).abs().max() > 0.5  # the densities differ


@pytest.mark.parametrize("modulation", [0.0, 0.7])
def test_coarea_formula_on_level_circles(modulation):
    law = RadialAngularLaw(1.1, modulation)
    f = RadialGaussianizer(1.1)
    z = torch.linspace(-3.5, 3.5, 15, dtype=torch.float64)
    radius = f.level_radius(z)
    torch.testing.assert_close(
        f(torch.stack([radius, 0 * radius], 1)).squeeze(1), z, rtol=0, atol=1e-12
    )
    integral = circle_coarea_integral(law.log_prob, f, radius, n_points=128)
    normal_pdf = torch.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)
    torch.testing.assert_close(integral, normal_pdf, rtol=1e-10, atol=1e-12)
    # Without the 1/|grad f| factor one gets the radius density instead, which is not the code density.
    wrong = circle_coarea_integral(lambda x: law.log_prob(x) + jepa_score(f, x), f, radius, 128)
    assert (wrong - normal_pdf).abs().max() > 0.05


def test_warped_grid_areas_follow_the_jacobian():
    matrix = torch.tensor([[2.0, 0.5], [0.0, 1.5]], dtype=torch.float64)
    linear = Affine(
        torch.linalg.inv(matrix), torch.zeros(2, dtype=torch.float64)
    )  # encoder x -> matrix x
    grid = warp_grid(linear, (-1, 1), (-2, 2), n_cells=4, n_edge=2)
    assert grid.cells.shape == (16, 8, 2) and grid.images.shape == (16, 8, 2)
    torch.testing.assert_close(
        grid.log_expansion, torch.full((16,), math.log(3.0), dtype=torch.float64)
    )
    mixture = GaussianMixture.random(2, 3, seed=16)
    f = RosenblattMap(mixture)
    grid = warp_grid(f, (-3, 3), (-3, 3), n_cells=30, n_edge=6)
    assert (grid.log_expansion - jepa_score(f, grid.centres)).abs().median() < 0.01
    unit = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]], dtype=torch.float64)
    torch.testing.assert_close(polygon_area(unit), torch.ones(1, dtype=torch.float64))


def test_histogram_chi_square_accepts_the_law_and_rejects_a_wrong_density():
    mixture = GaussianMixture.random(2, 3, seed=17)
    x = mixture.sample(20_000, seed=18)
    box = ((-4.0, 4.0), (-4.0, 4.0))
    right = histogram_chi_square(x, mixture.log_prob, *box, bins=16)
    assert right["p_value"] > 1e-3 and right["total_variation"] < 0.05
    f = RosenblattMap(mixture)
    wrong = histogram_chi_square(x, lambda p: log_standard_normal(f(p)), *box, bins=16)
    assert wrong["p_value"] < 1e-10


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="x: expected a tensor of shape"):
        RosenblattMap(GaussianMixture.random(2, 2))(torch.zeros(3, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="modulation"):
        RadialAngularLaw(1.0, 1.0)
    with pytest.raises(ValueError, match="transformed"):
        AffineCoupling.random(2, [0, 1])
    with pytest.raises(ValueError, match="matrix"):
        Affine(torch.zeros(2, 2), torch.zeros(2))
    with pytest.raises(TypeError, match="mixture"):
        RosenblattMap("not a mixture")


def test_float32_inputs_give_float32_codes():
    f = RosenblattMap(GaussianMixture.random(2, 3, seed=19))
    x = torch.zeros(4, 2)
    assert f(x).dtype == torch.float32 and f(x.double()).dtype == torch.float64
