"""Each chapter's check, run on real scores and on the same scores broken (sign flipped, shuffled
across samples, constant): the real ones pass, every broken one fails. This is what makes a chapter's
assertion a claim about JEPA-SCORE rather than about the harness."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jepabook import contamination, flows
from jepabook.chapters import (
    change_of_variables,
    curation,
    extremes,
    gmm_density,
    images,
    out_of_domain,
    outlier_detection,
)
from jepabook.data import GaussianMixture
from jepabook.datasets import ImageSet
from jepabook.image_jepa import held_out_images, load_shipped
from jepabook.verdicts import SABOTAGES, sabotage


@pytest.fixture(scope="module")
def fmnist_vs_mnist() -> dict:
    """JEPA-SCORE of the shipped, converged fmnist-cnn on 100 Fashion-MNIST test images and 60
    MNIST digits (the chapters' headline pair)."""
    sets = {
        "in": held_out_images("fashion-mnist").subset(slice(0, 100)),
        "MNIST": held_out_images("mnist").subset(slice(0, 60)),
    }
    return images.score_sets(load_shipped("fmnist-cnn"), sets, progress=False)


def test_out_of_domain_check_passes_on_real_scores(fmnist_vs_mnist):
    auroc = out_of_domain.check(fmnist_vs_mnist["in"], {"MNIST": fmnist_vs_mnist["MNIST"]})
    assert auroc.low > 0.6


@pytest.mark.parametrize("kind", SABOTAGES)
def test_out_of_domain_check_fails_on_sabotaged_scores(fmnist_vs_mnist, kind):
    broken = sabotage(fmnist_vs_mnist, kind, seed=1)
    with pytest.raises(AssertionError, match="MNIST vs Fashion-MNIST AUROC"):
        out_of_domain.check(broken["in"], {"MNIST": broken["MNIST"]})


def test_figure3_verdict_turns_with_a_flipped_score(fmnist_vs_mnist):
    def verdicts_of(scores: dict) -> dict[str, str]:
        records = out_of_domain.figure3_verdicts(
            {"a": scores["in"], "b": scores["in"]},
            {"a": {"MNIST": scores["MNIST"]}, "b": {"MNIST": scores["MNIST"]}},
            converged="a", smallest="b", baselines={}, setting="test", n_boot=200,
        )  # fmt: skip
        return {r.key: r.outcome for r in records}

    assert verdicts_of(fmnist_vs_mnist)["lower"] == "reproduced"
    assert verdicts_of(sabotage(fmnist_vs_mnist, "flipped"))["lower"] == "refuted"
    assert verdicts_of(sabotage(fmnist_vs_mnist, "constant"))["lower"] == "partly"


@pytest.fixture(scope="module")
def contaminated() -> tuple[dict, np.ndarray]:
    """JEPA-SCORE of the shipped fmnist-cnn on 100 clean Fashion-MNIST test images, 12 corrupted
    ones (three of each corruption) and 12 MNIST digits, with each image's kind."""
    test = held_out_images("fashion-mnist")
    broken = contamination.corrupt(
        test.images[100:112], list(contamination.CORRUPTIONS) * 3, seed=0
    )
    sets = {
        "clean": test.subset(slice(0, 100)),
        "corrupted": ImageSet("corrupted", broken),
        "off-domain": held_out_images("mnist").subset(slice(0, 12)),
    }
    scores = images.score_sets(load_shipped("fmnist-cnn"), sets, progress=False)
    kind = np.concatenate([[name] * len(values) for name, values in scores.items()])
    return scores, kind


def test_curation_check_passes_on_real_scores(contaminated):
    scores, kind = contaminated
    assert curation.check(np.concatenate(list(scores.values())), kind).low > 0.6


@pytest.mark.parametrize("kind_of_sabotage", SABOTAGES)
def test_curation_check_fails_on_sabotaged_scores(contaminated, kind_of_sabotage):
    scores, kind = contaminated
    broken = sabotage(scores, kind_of_sabotage, seed=1)
    with pytest.raises(AssertionError, match="problem vs clean images AUROC"):
        curation.check(np.concatenate(list(broken.values())), kind)


def test_outlier_verdicts_turn_with_a_flipped_score(fmnist_vs_mnist):
    def outcomes(jepa: dict, knn: dict) -> dict[str, str]:
        by_detector = {
            name: {"in-distribution": s["in"], "MNIST": s["MNIST"], "control": s["in"][:20]}
            for name, s in (("JEPA-SCORE", jepa), ("k-NN (k=10)", knn), ("multi", jepa))
        }
        records = outlier_detection.outlier_verdicts(
            by_detector, control="control", multi_view="multi", setting="test", n_boot=200
        )
        return {r.key: r.outcome for r in records}

    real = outcomes(fmnist_vs_mnist, fmnist_vs_mnist)
    assert (
        real["detects"] == "reproduced" and real["versus-knn"] == "reproduced"
    )  # level with itself
    flipped = outcomes(sabotage(fmnist_vs_mnist, "flipped"), fmnist_vs_mnist)
    assert flipped["detects"] == "refuted" and flipped["versus-knn"] == "refuted"


@pytest.fixture(scope="module")
def exact_parts() -> dict:
    """JEPA-SCORE, log N(f(x)) and log p at 300 samples of a 2-D mixture under its exact
    Gaussianising map (the theory chapters' encoder)."""
    mixture = GaussianMixture.random(2, 3, seed=0)
    return flows.decompose_log_density(mixture, mixture.sample(300, seed=1).double())


@pytest.mark.parametrize("kind", SABOTAGES)
def test_theory_checks_pass_on_exact_scores_and_fail_on_sabotaged_ones(exact_parts, kind):
    jepa, log_normal, log_p = (exact_parts[k] for k in ("jepa_score", "log_normal", "log_p"))
    change_of_variables.check_identity(jepa, log_normal, log_p)
    gmm_density.check((jepa + log_normal).numpy(), log_p.numpy())
    broken = torch.as_tensor(sabotage({"x": jepa.numpy()}, kind, seed=1)["x"])
    with pytest.raises(AssertionError, match="JEPA-SCORE \\+ log N"):
        change_of_variables.check_identity(broken, log_normal, log_p)
    full = sabotage({"x": (jepa + log_normal).numpy()}, kind, seed=1)["x"]
    with pytest.raises(AssertionError, match="full estimator"):
        gmm_density.check(full, log_p.numpy())


@pytest.fixture(scope="module")
def two_jepas() -> tuple[dict, np.ndarray]:
    """JEPA-SCORE of the two shipped short-training SIGReg JEPAs (CNN and ViT) on 12 Fashion-MNIST
    test images per class, and the images' classes (the extremes chapter's check at ci scale)."""
    sample = images.per_class(held_out_images("fashion-mnist"), 12, 0)
    scores = {
        name: images.score_sets(load_shipped(name), {"x": sample}, progress=False)["x"]
        for name in ("fmnist-cnn-short", "fmnist-vit-short")
    }
    return scores, sample.labels.numpy()


def test_extremes_check_passes_on_real_scores(two_jepas):
    scores, labels = two_jepas
    assert extremes.check(scores["fmnist-cnn-short"], scores["fmnist-vit-short"], labels) > 0.2


@pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")
@pytest.mark.parametrize("kind", SABOTAGES)
def test_extremes_check_fails_when_one_jepa_score_is_sabotaged(two_jepas, kind):
    scores, labels = two_jepas
    broken = sabotage(scores, kind, seed=1)
    with pytest.raises(AssertionError, match="Figure 1 agreement"):
        extremes.check(scores["fmnist-cnn-short"], broken["fmnist-vit-short"], labels)
