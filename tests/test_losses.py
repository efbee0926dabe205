"""SIGReg, moment matching and the prediction term."""

from __future__ import annotations

import pytest
import torch

from jepabook.losses import VectorViews, epps_pulley, moment_matching, prediction_loss, sigreg


def samples(kind: str, n: int = 1024, k: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if kind == "gaussian":
        return torch.randn(n, k, generator=g)
    if kind == "uniform":  # zero mean, unit variance, not Gaussian
        return (torch.rand(n, k, generator=g) - 0.5) * 12**0.5
    if kind == "bimodal":  # zero mean, unit variance, two modes
        signs = torch.randint(0, 2, (n, k), generator=g) * 2 - 1
        return 0.9 * signs + 0.19**0.5 * torch.randn(n, k, generator=g)
    if kind == "collapsed":
        return 0.01 * torch.randn(n, k, generator=g)
    raise ValueError(kind)


def fixed(seed: int = 1) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_sigreg_is_small_on_gaussian_and_large_otherwise():
    gaussian = float(sigreg(samples("gaussian"), generator=fixed()))
    assert gaussian < 2.0
    for kind in ("uniform", "bimodal", "collapsed"):
        assert float(sigreg(samples(kind), generator=fixed())) > 3 * gaussian, kind


def test_epps_pulley_of_gaussian_does_not_grow_with_n_but_of_uniform_does():
    small = epps_pulley(samples("gaussian", n=256, k=64)).mean()
    large = epps_pulley(samples("gaussian", n=4096, k=64)).mean()
    assert abs(float(large - small)) < 0.5
    uniform_small = epps_pulley(samples("uniform", n=256, k=64)).mean()
    uniform_large = epps_pulley(samples("uniform", n=4096, k=64)).mean()
    assert float(uniform_large) > 4 * float(uniform_small)


def test_sigreg_gradient_is_finite_and_pulls_towards_gaussian():
    z = samples("uniform").requires_grad_(True)
    loss = sigreg(z, generator=fixed())
    (grad,) = torch.autograd.grad(loss, z)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    stepped = (z - 0.05 * grad / grad.abs().max()).detach()  # a small step down the gradient
    assert float(sigreg(stepped, generator=fixed())) < float(loss.detach())


def test_sigreg_is_invariant_to_sample_order():
    z = samples("bimodal")
    permuted = z[torch.randperm(len(z), generator=fixed(3))]
    torch.testing.assert_close(sigreg(z, generator=fixed()), sigreg(permuted, generator=fixed()))


def test_sigreg_resamples_directions_each_call():
    z = samples("uniform", k=8)
    assert float(sigreg(z)) != float(sigreg(z))


def test_moment_matching_has_the_non_gaussian_shortcut():
    gaussian = float(moment_matching(samples("gaussian", n=8192)))
    uniform = float(moment_matching(samples("uniform", n=8192)))
    assert gaussian < 0.01 and uniform < 0.01  # blind to shape
    assert float(moment_matching(samples("collapsed"))) > 0.9  # but not to collapse


def test_prediction_loss_and_views():
    a = torch.ones(4, 3)
    assert float(prediction_loss(a, a)) == 0.0
    assert float(prediction_loss(a, 2 * a)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="predicted and target"):
        prediction_loss(a, torch.ones(4, 2))
    views = VectorViews(noise=0.1, mask=0.5)
    x = torch.ones(2000, 4)
    view = views(x, fixed())
    assert 0.4 < float((view == 0).float().mean()) < 0.6
    assert abs(float(view[view != 0].std()) - 0.1) < 0.02


def test_bad_embeddings_are_named():
    with pytest.raises(ValueError, match="z: expected embeddings"):
        sigreg(torch.randn(10))
    with pytest.raises(ValueError, match="z: expected embeddings"):
        moment_matching(torch.randn(1, 4))


def test_epps_pulley_gradient_matches_finite_differences():
    projections = torch.randn(12, 3, dtype=torch.float64, generator=fixed(4), requires_grad=True)
    assert torch.autograd.gradcheck(lambda p: epps_pulley(p, n_points=5), (projections,))
