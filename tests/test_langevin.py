"""Langevin samplers, the differentiable JEPA-SCORE gradient and per-mode weight recovery."""

from __future__ import annotations

import math

import pytest
import torch

from jepabook import jepa_score
from jepabook import langevin as L
from jepabook.chapters import langevin as LC
from jepabook.data import GaussianMixture
from jepabook.density import log_standard_normal
from jepabook.flows import Affine, RosenblattMap
from jepabook.metrics import bandwidth_ladder, mmd2_unbiased
from jepabook.models import MLP


def gaussian_score(mean: float, var: float):
    return lambda x: -(x - mean) / var


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_ula_matches_the_exact_stationary_variance_of_the_discretised_chain(beta):
    # For s(x) = -(x - m) / v, ULA is an AR(1): x' = m + (1 - h beta / v)(x - m) + sqrt(2h) xi, whose
    # stationary variance is 2h / (1 - (1 - h beta / v)^2) (-> v / beta as h -> 0).
    mean, var, h = 1.5, 0.5, 0.1
    x0 = torch.zeros(20_000, 2, dtype=torch.float64)
    schedule = L.Schedule(torch.full((80,), h), torch.full((80,), beta))
    x = L.langevin(gaussian_score(mean, var), x0, schedule, seed=1)
    rho = 1 - h * beta / var
    exact = 2 * h / (1 - rho**2)
    assert float(x.mean()) == pytest.approx(mean, abs=0.02)
    assert float(x.var()) == pytest.approx(exact, rel=0.03)
    assert abs(exact - var / beta) > 0.05  # the discretisation bias is really there and measured


def test_schedules():
    plain = L.constant_schedule(0.01, 7)
    assert len(plain) == 7 and bool((plain.betas == 1).all())
    ann = L.annealed_schedule(
        101, step_start=0.1, step_end=0.01, beta_start=0.2, anneal_fraction=0.5
    )
    assert float(ann.betas[0]) == pytest.approx(0.2) and float(ann.betas[-1]) == 1.0
    assert bool((ann.betas[50:] == 1).all()) and bool((ann.betas.diff() >= 0).all())
    assert float(ann.steps[0]) == pytest.approx(0.1) and float(ann.steps[-1]) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="steps, betas"):
        L.Schedule(torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError, match="beta_start"):
        L.annealed_schedule(10, step_start=0.1, step_end=0.01, beta_start=0.0)


def test_non_finite_chain_is_reported_with_its_index():
    def score(x):
        s = torch.zeros_like(x)
        s[3] = float("nan")
        return s

    with pytest.raises(FloatingPointError, match="chain 3"):
        L.langevin(score, torch.zeros(5, 2), L.constant_schedule(0.1, 2))


def test_max_drift_clips_each_chain():
    x = L.langevin(lambda x: torch.full_like(x, 1e20), torch.zeros(4, 2), L.Schedule([1e-12], [1.0]),
                   max_drift=0.5)  # fmt: skip
    assert float(x.norm(dim=1).max()) == pytest.approx(0.5, abs=1e-4)


@pytest.fixture(scope="module")
def mixture():
    return GaussianMixture.random(2, 3, seed=1)


def test_gradient_of_full_estimator_on_the_rosenblatt_map_is_the_true_score(mixture):
    x = mixture.sample(64, seed=2).double()
    full = L.estimator_score(RosenblattMap(mixture), "full")(x)
    torch.testing.assert_close(full, mixture.score(x), rtol=1e-6, atol=1e-8)
    jepa_only = L.estimator_score(RosenblattMap(mixture), "jepa")(x)
    assert float((jepa_only - mixture.score(x)).norm(dim=1).mean()) > 0.3  # omitting log N matters


def test_estimator_score_matches_finite_differences_of_jepa_score():
    torch.manual_seed(0)
    encoder = MLP(2, 2, hidden=16, depth=2).double()
    x = torch.randn(6, 2, dtype=torch.float64)

    def full(p):
        return jepa_score(encoder, p) + log_standard_normal(encoder(p).detach())

    for kind, fn in (("full", full), ("jepa", lambda p: jepa_score(encoder, p))):
        h, eye = 1e-5, torch.eye(2, dtype=torch.float64)
        fd = torch.stack([(fn(x + h * eye[i]) - fn(x - h * eye[i])) / (2 * h) for i in range(2)], 1)
        torch.testing.assert_close(L.estimator_score(encoder, kind)(x), fd, rtol=1e-5, atol=1e-6)
    assert not any(p.grad is not None for p in encoder.parameters())  # the model is left untouched


def test_log_singular_sum_matches_jepa_score_square_and_not():
    torch.manual_seed(1)
    for K in (1, 2, 3):
        encoder = MLP(2, K, hidden=8, depth=1).double()
        x = torch.randn(5, 2, dtype=torch.float64, requires_grad=True)
        _, J = L.jacobian_with_graph(encoder, x)
        assert J.shape == (5, K, 2)
        torch.testing.assert_close(
            L.log_singular_sum(J).detach(), jepa_score(encoder, x.detach()), rtol=1e-9, atol=1e-9
        )


def test_affine_encoder_has_a_constant_jepa_score_so_a_zero_gradient():
    enc = Affine(torch.tensor([[2.0, 0.3], [0.0, 0.5]]), torch.tensor([1.0, -1.0]))
    x = torch.randn(8, 2, dtype=torch.float64)
    assert float(L.estimator_score(enc, "jepa")(x).abs().max()) < 1e-10


def test_true_score_sampler_recovers_the_mixture_and_broken_scores_do_not(mixture):
    ref = mixture.sample(600, seed=3)
    bw = bandwidth_ladder(mixture.sample(600, seed=4))
    x0 = 3 * torch.randn(600, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    schedule = L.constant_schedule(0.04, 200)
    results = {}
    for name, score in {
        "true": mixture.score,
        "wrong sign": lambda x: -mixture.score(x),
        "shuffled": LC.shuffled_score(mixture.score),
    }.items():
        x = L.langevin(score, x0, schedule, seed=6, max_drift=1.0)
        results[name] = (mmd2_unbiased(x, ref, bw), LC.weight_error(mixture, x, ref))
    floor = mmd2_unbiased(mixture.sample(600, seed=7), ref, bw)
    assert results["true"][0] < 3 * abs(floor) + 2e-3 and results["true"][1] < 0.08, results
    for name in ("wrong sign", "shuffled"):
        assert results[name][0] > 0.05 and results[name][1] > 0.1, (name, results)


def test_mode_weights(mixture):
    assert LC.assign_modes(mixture, mixture.means).tolist() == list(range(mixture.n_components))
    w = LC.mode_weights(mixture, mixture.sample(5000, seed=8))
    assert float(w.sum()) == pytest.approx(1.0)
    assert (
        float((w - mixture.weights).abs().max()) < 0.08
    )  # hard assignment is close to the weights
    assert LC.weight_error(mixture, mixture.means, mixture.means) == 0.0


def test_mala_removes_the_discretisation_bias_of_ula():
    # At h = 0.8 v ULA's stationary variance is v / (1 - h / (2 v)) = 1.67 v; MALA's accept/reject step
    # leaves N(m, v) itself invariant, so its chains keep variance v. A flipped log-density fails.
    mean, var, h = 1.5, 0.5, 0.4
    x0 = mean + var**0.5 * torch.randn(20_000, 1, generator=torch.Generator().manual_seed(0),
                                       dtype=torch.float64)  # fmt: skip

    def log_density(x):
        return -0.5 * (x - mean).pow(2).sum(1) / var

    schedule = L.constant_schedule(h, 100)
    ula = L.langevin(L.score_of(log_density), x0, schedule, seed=1)
    x, accepted = L.mala(log_density, x0, schedule, seed=1)
    assert float(ula.var()) == pytest.approx(var / (1 - h / (2 * var)), rel=0.05)
    assert float(x.var()) == pytest.approx(var, rel=0.04) and float(x.mean()) == pytest.approx(
        mean, abs=0.02
    )
    assert 0.3 < float(accepted.mean()) < 0.99  # proposals are really rejected, and not all
    flipped, _ = L.mala(lambda x: -log_density(x), x0, L.constant_schedule(h, 30), seed=1)
    assert float(flipped.var()) > 3 * var


def test_value_and_score_match_the_closed_form_of_a_gaussian_mixture(mixture):
    x = mixture.sample(50, seed=9).double()
    value, score = L.value_and_score(mixture.log_prob, x, chunk_size=16)
    torch.testing.assert_close(value, mixture.log_prob(x))
    torch.testing.assert_close(score, mixture.score(x), rtol=1e-9, atol=1e-9)


def test_kde_log_density_is_the_mean_of_gaussian_kernels_and_is_normalised():
    from jepabook.models import whitening_of

    mixture = GaussianMixture.random(2, 3, seed=1)
    train, x, bandwidth = mixture.sample(600, seed=2), mixture.sample(40, seed=3).double(), 0.3
    ours = L.kde_log_density_fn(train, bandwidth)(x)
    whitening = whitening_of(train)[1]  # the kernel is N(x_i, b^2 (W^T W)^-1) in data coordinates
    kernel = torch.distributions.MultivariateNormal(
        torch.zeros(2, dtype=torch.float64),
        bandwidth**2 * torch.linalg.inv(whitening.T @ whitening),
    )
    expected = torch.logsumexp(kernel.log_prob(x[:, None, :] - train.double()), dim=1) - math.log(
        600
    )
    torch.testing.assert_close(ours, expected, rtol=1e-8, atol=1e-8)
    grid = torch.stack(torch.meshgrid(*[torch.linspace(-9, 9, 100, dtype=torch.float64)] * 2,
                                      indexing="ij"), -1).reshape(-1, 2)  # fmt: skip
    mass = float(L.kde_log_density_fn(train, bandwidth)(grid).exp().sum()) * (18 / 99) ** 2
    assert mass == pytest.approx(1.0, abs=0.02)


def test_flow_shortcut_equals_the_autograd_jacobian_route():
    from jepabook.flows import CouplingFlow

    torch.manual_seed(0)
    flow = CouplingFlow(
        torch.zeros(2), torch.tensor([[1.0, 0.0], [0.5, 2.0]]), n_layers=4, hidden=8
    )
    for p in flow.parameters():  # couplings start as the identity: make them non-trivial
        p.data.normal_(0, 0.3)
    x = torch.randn(16, 2, dtype=torch.float64)
    for kind in ("full", "jepa"):
        shortcut = L.value_and_score(L.estimator_log_density_fn(flow, kind), x)
        generic = L.value_and_score(
            lambda p, kind=kind: L.estimator_log_density(flow.double(), p, kind), x
        )
        torch.testing.assert_close(shortcut, generic, rtol=1e-9, atol=1e-9)
    assert float(L.estimator_score(flow, "full")(x).std()) > 0.1  # a non-constant score
