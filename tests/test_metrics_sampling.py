"""Two-sample distances of jepabook.metrics: MMD (RBF ladder, unbiased) and energy distance."""

from __future__ import annotations

import math

import pytest
import torch

from jepabook.metrics import bandwidth_ladder, energy_distance, mmd, mmd2_unbiased


def normal(n: int, mean: float = 0.0, std: float = 1.0, dim: int = 1, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return mean + std * torch.randn(n, dim, generator=g, dtype=torch.float64)


def expected_rbf(a: float, s: float, b: float, t: float, h: float) -> float:
    """E exp(-(X - Y)^2 / (2 h^2)) for independent X ~ N(a, s^2), Y ~ N(b, t^2)."""
    v = h**2 + s**2 + t**2
    return h / math.sqrt(v) * math.exp(-((a - b) ** 2) / (2 * v))


def test_mmd2_matches_closed_form_for_one_dimensional_normals():
    h, mu = 1.0, 1.0
    exact = 2 * expected_rbf(0, 1, 0, 1, h) - 2 * expected_rbf(0, 1, mu, 1, h)
    x, y = normal(3000, seed=1), normal(3000, mean=mu, seed=2)
    estimate = mmd2_unbiased(x, y, torch.tensor([h]))
    assert estimate == pytest.approx(exact, abs=0.01)
    assert exact > 0.1  # the check is about a clearly non-zero value


def test_mmd2_is_unbiased_on_equal_laws_and_grows_with_the_shift():
    values = [mmd2_unbiased(normal(300, seed=s), normal(300, seed=100 + s)) for s in range(20)]
    mean = sum(values) / len(values)
    spread = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    assert abs(mean) < 3 * spread / len(values) ** 0.5, (mean, spread)  # no bias beyond noise
    assert min(values) < 0  # the U-statistic does go below zero: no hidden bias term
    shifts = [mmd2_unbiased(normal(300, seed=1), normal(300, mean=m, seed=2)) for m in (0.5, 1, 3)]
    assert shifts[0] < shifts[1] < shifts[2]
    assert shifts[0] > 5 * spread


def test_mmd_is_symmetric_order_invariant_and_sees_a_variance_change():
    x, y = normal(400, dim=2, seed=3), normal(400, std=1.5, dim=2, seed=4)
    bw = bandwidth_ladder(x)
    perm = torch.randperm(400, generator=torch.Generator().manual_seed(0))
    assert mmd2_unbiased(x, y, bw) == pytest.approx(mmd2_unbiased(y, x, bw), rel=1e-12)
    assert mmd2_unbiased(x[perm], y, bw) == pytest.approx(mmd2_unbiased(x, y, bw), rel=1e-10)
    same = mmd2_unbiased(x, normal(400, dim=2, seed=5), bw)
    assert mmd(x, y, bw) > 3 * max(same, 1e-4) ** 0.5


def test_bandwidth_ladder_scales_with_the_data():
    x = normal(500, dim=2, seed=6)
    ladder = bandwidth_ladder(x)
    assert ladder.shape == (5,) and bool((ladder.diff() > 0).all())
    assert bandwidth_ladder(3 * x) == pytest.approx(3 * ladder, rel=1e-9)
    assert ladder[2] == pytest.approx(
        math.sqrt(2) * math.sqrt(2) * 0.8326, rel=0.1
    )  # median of |N(0,2I)|


def test_energy_distance_matches_closed_form_and_vanishes_on_equal_laws():
    mu = 1.0
    # X - Y ~ N(mu, 2): E|X - Y| = 2 phi(mu / sqrt 2) + mu (1 - 2 Phi(-mu / sqrt 2)) ... in closed form
    s = math.sqrt(2)
    folded = s * math.sqrt(2 / math.pi) * math.exp(-(mu**2) / (2 * s**2)) + mu * math.erf(
        mu / (s * math.sqrt(2))
    )
    exact = 2 * folded - 2 * (2 / math.sqrt(math.pi))
    estimate = energy_distance(normal(3000, seed=7), normal(3000, mean=mu, seed=8))
    assert estimate == pytest.approx(exact, abs=0.03)
    same = energy_distance(normal(2000, seed=9), normal(2000, seed=10))
    assert abs(same) < 0.01 < exact / 10


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="x, y"):
        mmd2_unbiased(normal(10, dim=2), normal(10, dim=3))
    with pytest.raises(ValueError, match="x"):
        energy_distance(torch.zeros(10), normal(10))
