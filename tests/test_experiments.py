"""The density experiment (jepabook.experiments) at tiny sizes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from jepabook.chapters import gmm_density as experiments
from jepabook.data import GaussianMixture
from jepabook.flows import RosenblattMap

pytestmark = pytest.mark.usefixtures("one_thread")


def test_residual_encoder_starts_as_the_whitening_map():
    mixture = GaussianMixture.random(3, 4, seed=0)
    data = mixture.sample(2000, seed=1)
    encoder = experiments.build_gmm_encoder(data, 3, gain=0.0)
    z = encoder(data).detach().double()
    assert torch.allclose(z.mean(0), torch.zeros(3, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(torch.cov(z.T), torch.eye(3, dtype=torch.float64), atol=1e-3)
    assert experiments.fold_fraction(experiments.build_gmm_encoder(data, 3), data[:200]) == 0.0
    with pytest.raises(ValueError, match="architecture"):
        experiments.build_gmm_encoder(data, 3, architecture="transformer")


class Fold(nn.Module):
    """(x1, x2) -> (x1, x2^2 - 1): folds the plane along x2 = 0."""

    def __init__(self):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return torch.stack([x[:, 0], x[:, 1] ** 2 - 1], 1) + self.dummy


def test_fold_fraction_sees_a_fold():
    x = torch.randn(1000, 2, generator=torch.Generator().manual_seed(0))
    assert 0.4 < experiments.fold_fraction(Fold(), x) <= 0.5


def test_full_estimator_is_exact_for_the_exact_map_and_jepa_score_alone_is_not():
    mixture = GaussianMixture.random(2, 3, seed=0)
    x = mixture.sample(400, seed=5)
    values = experiments.density_estimates(RosenblattMap(mixture), x)
    log_p = mixture.log_prob(x.double()).numpy()
    assert np.corrcoef(values["full"], log_p)[0, 1] > 0.9999
    assert np.corrcoef(values["jepa_score"], log_p)[0, 1] < 0.9
    assert np.allclose(values["full"] - values["jepa_score"], values["log_normal"])


def test_kde_tracks_a_gaussian_log_density():
    g = torch.Generator().manual_seed(0)
    train, x = torch.randn(1500, 2, generator=g), torch.randn(300, 2, generator=g)
    log_density, bandwidth = experiments.kde_log_density(train, x, max_search=600)
    truth = -0.5 * x.pow(2).sum(1).numpy()
    assert np.corrcoef(log_density, truth)[0, 1] > 0.95
    assert 0.05 < bandwidth < 2


def test_gmm_density_returns_the_chapter_columns_and_training_helps():
    result = experiments.gmm_density(2, 2000, scale="ci", steps=120, kde=False, keep_values=True)
    for name in (
        "pearson",
        "spearman",
        "full_pearson",
        "random_full_pearson",
        "exact_full_pearson",
    ):
        assert math.isfinite(result[name]), name
    low, high = result["full_pearson_ci"]
    assert low < result["full_pearson"] < high
    assert result["exact_full_pearson"] > 0.999
    assert result["full_minus_random_ci"][0] > 0  # training beats its own initialisation
    assert result["full_pearson"] > 0.3  # a broken estimator (shuffled, wrong sign) sits near 0
    assert set(result["values"]) >= {"log_p", "jepa_score", "full", "random_full"}
    with pytest.raises(ValueError, match="scale"):
        experiments.gmm_density(2, 100, scale="huge")


def test_train_gmm_encoder_keeps_its_signature_and_width():
    mixture = GaussianMixture.random(3, 2, seed=1)
    encoder, history = experiments.train_gmm_encoder(
        mixture, 300, width=2, regulariser="moments", steps=5, architecture="mlp"
    )
    assert encoder(torch.zeros(4, 3)).shape == (4, 2) and not encoder.training
    assert len(history.loss) == 5
