"""Outlier detectors behind one interface (jepabook.detectors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from jepabook import detectors as d
from jepabook.metrics import auroc
from jepabook.score import jepa_score, logmeanexp


def gaussian(n: int, dim: int = 8, shift: float = 0.0, seed: int = 0) -> d.Sample:
    """N(m, I) with m = 3 e_0 + shift e_1 (off the origin, so that directions differ too)."""
    z = np.random.default_rng(seed).normal(size=(n, dim))
    z[:, 0] += 3.0
    z[:, 1] += shift
    return d.Sample(z)


def test_embedding_detectors_separate_a_shifted_cloud():
    train, inliers, outliers = gaussian(2000), gaussian(300, seed=1), gaussian(300, shift=6, seed=2)
    for detector in (
        d.KNN(10),
        d.Mahalanobis(),
        d.GaussianMixtureDensity(3),
        d.KernelDensity(),
    ):
        detector.fit(train)
        assert auroc(detector.score(inliers), detector.score(outliers)) > 0.9, detector
        # and a second in-distribution sample sits at chance
        assert (
            abs(auroc(detector.score(inliers), detector.score(gaussian(300, seed=3))) - 0.5) < 0.1
        )


def test_mahalanobis_and_knn_equal_their_definitions():
    train, test = gaussian(500, 4, seed=4), gaussian(20, 4, shift=1, seed=5)
    z = train.embeddings
    mean, precision = z.mean(0), np.linalg.inv(np.cov(z, rowvar=False, bias=True))
    expected = -np.einsum("ni,ij,nj->n", test.embeddings - mean, precision, test.embeddings - mean)
    np.testing.assert_allclose(d.Mahalanobis().fit(train).score(test), expected, rtol=1e-9)
    unit = z / np.linalg.norm(z, axis=1, keepdims=True)
    q = test.embeddings / np.linalg.norm(test.embeddings, axis=1, keepdims=True)
    distances = np.sort(np.linalg.norm(q[:, None] - unit[None], axis=2), axis=1)
    np.testing.assert_allclose(d.KNN(3).fit(train).score(test), -distances[:, 2], rtol=1e-9)
    raw = np.sort(np.linalg.norm(test.embeddings[:, None] - z[None], axis=2), axis=1)
    np.testing.assert_allclose(d.KNN(3, normalise=False).fit(train).score(test), -raw[:, 2])
    log_density = stats.multivariate_normal(mean, np.cov(z, rowvar=False)).logpdf(test.embeddings)
    gmm = d.GaussianMixtureDensity(1).fit(train).score(test)
    np.testing.assert_allclose(gmm, log_density, atol=0.02)


def test_class_conditional_mahalanobis_sees_the_gap_between_two_classes():
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 2, 2000)
    z = rng.normal(size=(2000, 4)) * 0.5
    z[:, 0] += np.where(labels == 1, 3.0, -3.0)
    train = d.Sample(z, labels=labels)
    inliers = d.Sample(z[:200] + rng.normal(size=(200, 4)) * 0.1)
    between = d.Sample(rng.normal(size=(200, 4)) * 0.5)  # the empty middle, at the global mean
    agnostic = d.Mahalanobis().fit(train)
    per_class = d.Mahalanobis(class_conditional=True).fit(train)
    assert auroc(agnostic.score(inliers), agnostic.score(between)) < 0.5  # the middle looks typical
    assert auroc(per_class.score(inliers), per_class.score(between)) > 0.95


def test_embedding_norm_ranks_shrunken_embeddings_low():
    norm = d.EmbeddingNorm().fit(gaussian(50))
    small = d.Sample(0.3 * gaussian(100, seed=7).embeddings)
    assert auroc(norm.score(gaussian(100, seed=8)), norm.score(small)) > 0.95
    np.testing.assert_allclose(norm.score(small), np.linalg.norm(small.embeddings, axis=1))


def linear_sample(A: torch.Tensor, x: torch.Tensor) -> d.Sample:
    encoder = nn.Linear(A.shape[1], A.shape[0], bias=False).double()
    encoder.weight.data = A
    return d.embed_sample(encoder, x)


def test_change_of_variables_recovers_the_data_density_of_an_invertible_encoder():
    # x ~ N(0, C), f(x) = Q C^(-1/2) x is N(0, I): log p(x) = log|det f'| + log N(f(x); 0, I)
    torch.manual_seed(0)
    variances = torch.tensor([1.0, 0.5, 2.0, 0.25], dtype=torch.float64)
    C = torch.diag(variances)
    Q = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))[0]
    A = Q @ torch.diag(variances.rsqrt())
    law = torch.distributions.MultivariateNormal(torch.zeros(4, dtype=torch.float64), C)
    train, test = linear_sample(A, law.sample((20000,))), linear_sample(A, law.sample((50,)))
    jepa = d.JepaScore().score(test)
    np.testing.assert_allclose(jepa, torch.linalg.slogdet(A)[1].item(), rtol=1e-9)
    exact = law.log_prob(test.inputs).numpy()
    standard = d.ChangeOfVariables("standard").fit(train).score(test)
    np.testing.assert_allclose(standard, exact, rtol=1e-9)
    fitted = d.ChangeOfVariables("fitted").fit(train).score(test)  # estimated mean and covariance
    np.testing.assert_allclose(fitted, exact, rtol=0.03)
    # JEPA-SCORE alone cannot rank these samples: it is the same for all of them
    assert np.ptp(jepa) < 1e-9 and np.ptp(exact) > 1


def test_multi_view_is_minus_logmeanexp_of_the_views_and_one_view_of_identity_is_jepa():
    torch.manual_seed(1)
    encoder = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(7, 5, dtype=torch.float64)
    sample = d.embed_sample(encoder, x)

    def jitter(inputs, generator):
        noise = torch.randn(inputs.shape, generator=generator, dtype=inputs.dtype)
        return inputs + 0.3 * noise

    got = d.MultiView(jitter, 4, seed=3).score(sample)
    generator = torch.Generator().manual_seed(3)
    views = torch.stack([jepa_score(encoder, jitter(x, generator)) for _ in range(4)])
    np.testing.assert_allclose(got, (-logmeanexp(-views, dim=0)).numpy(), rtol=1e-10)
    same = d.MultiView(lambda inputs, generator: inputs, 1).score(d.embed_sample(encoder, x))
    np.testing.assert_allclose(same, d.JepaScore().score(sample), rtol=1e-12)


def test_cross_fit_scores_never_let_a_sample_find_itself():
    sample = gaussian(200, seed=9)
    knn = d.KNN(1)
    assert np.allclose(knn.fit(sample).score(sample), 0)  # each point is its own neighbour
    crossed = d.cross_fit_scores(d.KNN(1), sample, folds=2)
    assert (crossed < -1e-3).all()
    twin = d.Sample(np.concatenate([sample.embeddings, sample.embeddings[:1] + 1e-9]))
    crossed = d.cross_fit_scores(d.KNN(1), twin, folds=len(twin))  # leave-one-out
    assert crossed[0] > -1e-6 and crossed[-1] > -1e-6 and (crossed[1:-1] < -1e-3).all()


def test_evaluate_measures_every_detector_on_every_set():
    train, inliers = gaussian(300), gaussian(100, seed=1)
    outliers = {"shifted": gaussian(80, shift=6, seed=2), "same": gaussian(80, seed=3)}
    table = d.evaluate([d.KNN(5), d.Mahalanobis()], train, inliers, outliers, n_boot=50)
    assert list(table.detector) == ["k-NN (k=5)"] * 2 + ["Mahalanobis"] * 2
    assert {"auroc", "auroc_low", "auroc_high", "aupr", "fpr95", "fpr95_high"} <= set(table)
    shifted = table[table.set == "shifted"]
    assert (shifted.auroc > 0.9).all() and (shifted.fpr95 < 0.5).all()


def test_standard_detectors_line_up():
    names = [det.name for det in d.standard_detectors(augment=lambda x, g: x, n_views=2)]
    assert names[:3] == ["JEPA-SCORE", "JEPA-SCORE + log N (fitted)", "multi-view JEPA-SCORE (M=2)"]
    assert "Mahalanobis (per class)" in names and "embedding norm" in names
    assert "Mahalanobis (per class)" not in [det.name for det in d.standard_detectors(labels=False)]


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="embeddings"):
        d.Sample(np.zeros(5))
    with pytest.raises(ValueError, match="sample 1"):
        d.Sample(np.array([[0.0], [np.inf]]))
    with pytest.raises(ValueError, match="labels"):
        d.Sample(np.zeros((3, 2)), labels=np.zeros(2))
    with pytest.raises(ValueError, match="labels"):
        d.Mahalanobis(class_conditional=True).fit(gaussian(10))
    with pytest.raises(ValueError, match="inputs and encoder"):
        d.JepaScore().score(gaussian(3))
    with pytest.raises(RuntimeError, match="fit"):
        d.KNN().score(gaussian(3))
    with pytest.raises(ValueError, match="8-D"):
        d.KNN(2).fit(gaussian(10)).score(gaussian(3, dim=4))
    with pytest.raises(ValueError, match="k"):
        d.KNN(0)
    with pytest.raises(ValueError, match="gaussian"):
        d.ChangeOfVariables("uniform")
    with pytest.raises(ValueError, match="n_views"):
        d.MultiView(lambda x, g: x, 0)
    with pytest.raises(ValueError, match="folds"):
        d.cross_fit_scores(d.KNN(), gaussian(10), folds=1)
