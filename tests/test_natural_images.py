"""The natural-images chapter: out-of-domain sets at CIFAR's size, the ImageNet CNNs as encoders of
CIFAR pixels, the factorised score, and the chapter's checks, each failing on a sabotaged score."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from jepabook import imagenet_cnns, natural_ood
from jepabook.chapters import natural_images as chapter
from jepabook.datasets import CIFAR10_CLASSES, ImageSet
from jepabook.metrics import auroc
from jepabook.score import jepa_score
from jepabook.verdicts import SABOTAGES, sabotage

# ---------------------------------------------------------------- sets


def test_far_sets_are_rgb_images_at_cifar_size():
    base = ImageSet("cifar", torch.rand(6, 3, 32, 32))
    sets = natural_ood.far_sets(base, 5, seed=0)
    assert len(sets) == 6 + len(natural_ood.SHIFTS)
    for name, images in sets.items():
        assert images.images.shape == (5, 3, 32, 32), name
        assert images.images.dtype == torch.float32, name
        assert 0 <= images.images.min() and images.images.max() <= 1, name
    assert torch.equal(sets["CIFAR, inverted"].images, 1 - base.images[:5])
    grey = sets["MNIST digits"].images
    assert torch.equal(grey[:, 0], grey[:, 1]) and torch.equal(grey[:, 0], grey[:, 2])
    again = natural_ood.far_sets(base, 5, seed=0)
    assert all(torch.equal(again[k].images, v.images) for k, v in sets.items())


def test_shifts_change_images_the_way_they_say():
    base = ImageSet("cifar", torch.rand(3, 3, 32, 32), torch.tensor([0, 1, 2]), CIFAR10_CLASSES)
    noise = natural_ood.shift(base, "noise")
    assert 0.03 < (noise.images - base.images).abs().mean() < 0.1
    blur = natural_ood.shift(base, "blur")
    assert blur.images.std() < 0.5 * base.images.std()  # white noise loses most of its variance
    assert torch.allclose(blur.images.mean(), base.images.mean(), atol=0.01)
    jpeg = natural_ood.shift(base, "JPEG")
    assert jpeg.images.shape == base.images.shape and not torch.equal(jpeg.images, base.images)
    assert torch.equal(natural_ood.shift(base, "inverted").images, 1 - base.images)
    assert torch.equal(noise.labels, base.labels)
    with pytest.raises(ValueError, match="kind"):
        natural_ood.shift(base, "rotated")


def test_held_out_mask_marks_the_near_shift_classes():
    labels = torch.arange(10)
    images = ImageSet("cifar", torch.zeros(10, 3, 32, 32), labels, CIFAR10_CLASSES)
    held = natural_ood.held_out_mask(images)
    assert [CIFAR10_CLASSES[i] for i in np.flatnonzero(held)] == sorted(
        natural_ood.HELD_OUT_CLASSES, key=CIFAR10_CLASSES.index
    )


def test_pixel_statistics():
    flat = torch.full((2, 3, 8, 8), 0.25)
    stats = natural_ood.pixel_statistics(flat)
    assert np.allclose(stats["brightness"], 0.25)
    assert np.allclose(stats["contrast"], 0) and np.allclose(stats["smoothness"], 0)


# ---------------------------------------------------------------- encoders and the factorised score


def _toy_cnn() -> natural_ood.PixelEncoder:
    """A small CNN laid out like torchvision's MobileNetV2 (`features`, last block a 1 x 1 conv):
    (B, 3, 32, 32) -> 5 channels at 1 x 1 -> 12 pooled features; float64."""
    torch.manual_seed(0)
    model = nn.Module()
    model.features = nn.Sequential(
        nn.Sequential(nn.Conv2d(3, 4, 8, stride=8), nn.Tanh()),
        nn.Sequential(nn.Conv2d(4, 5, 4), nn.Tanh()),
        nn.Sequential(nn.Conv2d(5, 12, 1), nn.Tanh()),
    )
    encoder = imagenet_cnns.PooledFeatures(model, "features")
    return natural_ood.PixelEncoder(encoder, (0.5,) * 3, (0.25,) * 3).double().eval()


def test_factorised_score_is_jepa_score():
    encoder = _toy_cnn()
    x = torch.rand(3, 3, 32, 32, dtype=torch.float64)
    assert natural_ood.jacobian_sizes(encoder, x[:1]) == (12, 5)
    fast = natural_ood.factorised_score(encoder, x)
    plain = jepa_score(encoder, x)
    assert torch.allclose(fast, plain, rtol=1e-9), (fast, plain)
    # 7 of the 12 singular values are 0: each adds log(eps)
    assert (fast < 7 * np.log(1e-6) + 5 * 5).all()


def test_factorised_score_falls_back_to_jepa_score_without_a_trunk():
    torch.manual_seed(0)
    flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 6), nn.Tanh()).double()
    encoder = natural_ood.PixelEncoder(flat, (0.0,) * 3, (1.0,) * 3).double().eval()
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    assert natural_ood.trunk_and_head(encoder) is None
    assert torch.equal(natural_ood.factorised_score(encoder, x), jepa_score(encoder, x))


@pytest.mark.parametrize("name", list(chapter.IMAGENET_CNNS))
def test_imagenet_cnn_trunk_and_head_compose_to_the_network(name):
    encoder = natural_ood.imagenet_encoder(name, 32)
    x = torch.rand(2, 3, 32, 32)
    trunk, head = natural_ood.trunk_and_head(encoder)
    with torch.no_grad():
        assert torch.allclose(head(trunk(x)), encoder(x), atol=1e-5)
    assert natural_ood.jacobian_sizes(encoder, x[:1]) == (1280, 320)


def test_normalisation_is_the_networks_own():
    mobilenet = imagenet_cnns.preprocess("mobilenetv2-in1k")
    assert tuple(mobilenet.mean) == natural_ood.NORMALISATION["mobilenetv2-in1k"][0]
    assert tuple(mobilenet.std) == natural_ood.NORMALISATION["mobilenetv2-in1k"][1]
    normalize = imagenet_cnns.preprocess("efficientnet-lite0-in1k").transforms[-1]
    mean, std = natural_ood.NORMALISATION["efficientnet-lite0-in1k"]
    assert np.allclose(normalize.mean, mean) and np.allclose(normalize.std, std)


def test_default_encoders_include_the_cifar_jepa_once_shipped():
    assert chapter.default_encoders(()) == list(chapter.IMAGENET_CNNS)
    assert chapter.default_encoders(("fmnist-cnn", "cifar10-cnn"))[-1] == "cifar10-cnn"
    both = chapter.default_encoders(("cifar10-cnn", "cifar10-resnet18"))
    assert both[-2:] == ["cifar10-resnet18", "cifar10-cnn"]


# ---------------------------------------------------------------- the chapter's checks, sabotaged


@pytest.fixture(scope="module")
def separated() -> dict[str, np.ndarray]:
    """Scores shaped like MobileNetV2's at ci scale: 20 CIFAR images, 12 pooled out-of-domain ones
    that mostly score lower (two of them inside the CIFAR range)."""
    rng = np.random.default_rng(0)
    inliers = rng.normal(-15650, 120, 20)
    outliers = np.concatenate([rng.normal(-16800, 400, 10), [-15600, -15550]])
    return {"in": inliers, "out": outliers}


def test_detection_check_passes_on_separated_scores(separated):
    assert chapter.check_detection(separated["in"], separated["out"], "pooled").low > 0.6


@pytest.mark.parametrize("kind", SABOTAGES)
def test_detection_check_fails_on_sabotaged_scores(separated, kind):
    broken = sabotage(separated, kind, seed=1)
    with pytest.raises(AssertionError, match="vs CIFAR-10 AUROC"):
        chapter.check_detection(broken["in"], broken["out"], "pooled")


def test_figure3_verdict_turns_with_a_sabotaged_score(separated):
    def outcome(scores: dict) -> str:
        sets = {"a": scores["out"][:6], "b": scores["out"][6:]}
        record = chapter.figure3_verdict(
            scores["in"], sets, baseline=None, setting="test", n_boot=200
        )
        return record.outcome

    assert outcome(separated) in ("reproduced", "partly")
    assert outcome(sabotage(separated, "flipped")) == "refuted"
    assert outcome(sabotage(separated, "constant")) == "partly"


def test_versus_knn_verdict_turns_with_a_flipped_score(separated):
    knn = (separated["in"] + 0.0, {"a": separated["out"]})
    level = chapter.versus_knn_verdict(
        (separated["in"], {"a": separated["out"]}), knn, setting="test", n_boot=200
    )
    assert level.outcome == "reproduced"
    flipped = sabotage(separated, "flipped")
    worse = chapter.versus_knn_verdict(
        (flipped["in"], {"a": flipped["out"]}), knn, setting="test", n_boot=200
    )
    assert worse.outcome == "refuted"


def test_detector_table_reads_jepa_score_from_the_given_scores(separated):
    rng = np.random.default_rng(1)
    fit = rng.normal(size=(50, 4))
    inliers = (rng.normal(size=(20, 4)), separated["in"])
    outliers = {"pooled": (rng.normal(3, 1, size=(12, 4)), separated["out"])}
    table, scores = chapter.detector_table(nn.Identity(), fit, inliers, outliers, n_boot=50)
    assert set(table.detector) == set(chapter.DETECTORS)
    assert np.array_equal(scores["JEPA-SCORE"]["pooled"], separated["out"])
    jepa = table.set_index("detector").loc["JEPA-SCORE"]
    assert jepa.auroc == pytest.approx(auroc(separated["in"], separated["out"]))


def test_the_cifar_jepa_runs_as_a_pixel_encoder():
    from jepabook.image_jepa import TrainedEncoder, recipe_for
    from jepabook.models import build_encoder

    recipe = recipe_for("cifar10-cnn")
    torch.manual_seed(0)
    network = build_encoder(recipe.architecture, **recipe.arch_kwargs()).eval()
    meta = {"mean": 0.47, "std": 0.25, "in_channels": 3}
    encoder = natural_ood.trained_encoder(TrainedEncoder("cifar", network, meta, None, None))
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(encoder(x), network((x - 0.47) / 0.25))
    assert natural_ood.trunk_and_head(encoder) is None
    assert torch.equal(natural_ood.factorised_score(encoder, x), jepa_score(encoder, x))


def test_loading_the_cifar_jepa_before_it_is_shipped_says_so():
    from jepabook.image_jepa import shipped_encoders
    from jepabook.shipped import ShippedWeightsError

    missing = [name for name in chapter.CIFAR_JEPAS if name not in shipped_encoders()]
    if not missing:
        pytest.skip("every CIFAR JEPA is shipped")
    with pytest.raises(ShippedWeightsError):
        chapter.load(missing[0], 32, None)
