"""Image JEPAs: views, multi-view training, recipes, cached checkpoints, probes and image metrics."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from jepabook import image_jepa, shipped
from jepabook.backbones import load_backbone
from jepabook.chapters import extremes as ex
from jepabook.chapters import images as img
from jepabook.chapters import out_of_domain as ood
from jepabook.chapters import singular_vectors as sv
from jepabook.chapters.extremes import agreement, extremes, tail_overlap, within_class_spearman
from jepabook.chapters.images import per_class
from jepabook.chapters.singular_vectors import singular_vectors
from jepabook.datasets import ImageSet
from jepabook.losses import VectorViews
from jepabook.metrics import auroc, bootstrap_auroc
from jepabook.models import MLP, SmallCNN
from jepabook.probe import embed, linear_probe
from jepabook.score import jepa_score
from jepabook.train import TrainConfig, save_checkpoint, train_jepa
from jepabook.views import LUMA, YIQ, ImageViews, luminance, rotate_hue


def test_views_identity_when_every_perturbation_is_off():
    x = torch.rand(4, 1, 28, 28)
    views = ImageViews(min_area=1.0, degrees=0.0, flip=False, noise=0.0)
    assert torch.allclose(views(x, torch.Generator().manual_seed(0)), x, atol=1e-5)


def test_views_are_seeded_and_random():
    x = torch.rand(8, 1, 28, 28)
    views = ImageViews()
    a = views(x, torch.Generator().manual_seed(1))
    b = views(x, torch.Generator().manual_seed(1))
    c = views(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.allclose(a, c)
    assert (a - x).abs().mean() > 0.05  # crops and rotations move pixels, not only noise


@pytest.mark.parametrize(
    "kwargs", [{"min_area": 0.0}, {"min_area": 1.5}, {"degrees": -1.0}, {"noise": -0.1}]
)
def test_views_reject_bad_arguments(kwargs):
    with pytest.raises(ValueError, match="min_area|degrees"):
        ImageViews(**kwargs)


def test_contrast_jitter_changes_intensity_and_rotations_keep_the_background():
    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 10:18, 10:18] = 1.0
    turned = ImageViews(min_area=1.0, degrees=45.0, flip=False, noise=0.0)(x, torch.Generator())
    assert turned[:, :, 0, 0].abs().max() < 1e-6  # the border (background) fills the corners
    jitter = ImageViews(min_area=1.0, degrees=0.0, flip=False, noise=0.0, contrast=0.3)
    view = jitter(x, torch.Generator().manual_seed(0))
    inside, outside = view[:, 0, 12, 12], view[:, 0, 0, 0]
    assert (inside - outside).std() > 0.05 and outside.std() > 0.05  # contrast and brightness vary
    assert (inside - outside).min() >= 0.7 - 1e-6 and (inside - outside).max() <= 1.3 + 1e-6
    with pytest.raises(ValueError, match="contrast"):
        ImageViews(contrast=1.0)


def test_views_with_colour_off_draw_what_they_drew_before_the_colour_options():
    """The shipped grayscale encoders were trained before the colour options existed: with them off,
    a seeded view and the generator's state afterwards are the ones recorded with that code."""
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(5)
    view = ImageViews(min_area=0.3, contrast=0.3)(x, generator).double()
    assert float(view.sum()) == pytest.approx(24303.148921859218, rel=1e-9)
    assert float((view**2).sum()) == pytest.approx(15731.88845545947, rel=1e-9)
    assert torch.rand(1, generator=generator).item() == pytest.approx(0.7174928784370422, abs=1e-7)


def _colour_view(**colour) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour-only views (no crop, rotation, flip, contrast or noise) of random RGB images."""
    x = torch.rand(256, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    views = ImageViews(min_area=1.0, degrees=0.0, flip=False, noise=0.0, **colour)
    return x, views(x, torch.Generator().manual_seed(1))


def test_grayscale_views_replace_a_fraction_of_the_images_by_their_luminance():
    x, view = _colour_view(grayscale=0.3)
    gray = (view[:, 0] == view[:, 1]).all((1, 2)) & (view[:, 1] == view[:, 2]).all((1, 2))
    assert 0.2 < gray.float().mean() < 0.4  # drawn per image with probability 0.3
    expected = (x * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1)
    torch.testing.assert_close(view[gray, 0], expected[gray])
    torch.testing.assert_close(view[~gray], x[~gray])  # the others are untouched
    _, always = _colour_view(grayscale=1.0)
    assert torch.equal(always[:, :1].expand_as(always), always)


def test_saturation_scales_the_chroma_and_keeps_the_luminance():
    x, view = _colour_view(saturation=0.4)
    torch.testing.assert_close(luminance(view), luminance(x))
    chroma, before = view - luminance(view), x - luminance(x)
    factor = (chroma * before).sum((1, 2, 3)) / (before**2).sum((1, 2, 3))  # per image
    torch.testing.assert_close(chroma, factor.view(-1, 1, 1, 1) * before)
    assert factor.min() >= 0.6 - 1e-5 and factor.max() <= 1.4 + 1e-5 and factor.std() > 0.1
    gray = x.mean(1, keepdim=True).expand_as(x)  # a gray image has no chroma to scale
    same = ImageViews(min_area=1.0, degrees=0.0, flip=False, noise=0.0, saturation=0.4)
    torch.testing.assert_close(same(gray, torch.Generator().manual_seed(2)), gray)


def test_channel_gain_scales_each_channel_by_its_own_factor():
    x, view = _colour_view(channel_gain=0.1)
    gain = (view * x).sum((2, 3)) / (x**2).sum((2, 3))  # (B, 3)
    torch.testing.assert_close(view, gain[:, :, None, None] * x)
    assert gain.min() >= 0.9 - 1e-5 and gain.max() <= 1.1 + 1e-5
    assert (gain[:, 0] - gain[:, 1]).abs().mean() > 0.02  # the channels move independently


def test_hue_rotation_keeps_luminance_and_gray_and_turns_the_chroma():
    x, view = _colour_view(hue=0.1)
    assert view.shape == x.shape
    torch.testing.assert_close(luminance(view), luminance(x))  # YIQ's Y is left alone
    chroma, before = view - luminance(view), x - luminance(x)
    assert (chroma - before).abs().amax((1, 2, 3)).median() > 0.05  # colours moved
    # a rotation: the chroma's I-Q length is kept; its angle moves by at most 0.1 turn
    to_iq = torch.tensor(YIQ[1:])
    iq, iq_before = (torch.einsum("ic,bchw->bihw", to_iq, v) for v in (view, x))
    torch.testing.assert_close(iq.norm(dim=1), iq_before.norm(dim=1), atol=1e-5, rtol=1e-4)
    angle = torch.atan2(iq[:, 1], iq[:, 0]) - torch.atan2(iq_before[:, 1], iq_before[:, 0])
    angle = torch.remainder(angle + torch.pi, 2 * torch.pi) - torch.pi  # (B, H, W), radians
    assert angle.abs().max() <= 2 * torch.pi * 0.1 + 1e-4 and angle.std() > 0.1
    assert (angle.std((1, 2)) < 1e-3).all()  # one angle per image
    gray = x.mean(1, keepdim=True).expand_as(x)
    turned = ImageViews(min_area=1.0, degrees=0.0, flip=False, noise=0.0, hue=0.5)
    torch.testing.assert_close(turned(gray, torch.Generator().manual_seed(2)), gray)
    torch.testing.assert_close(rotate_hue(x, torch.zeros(len(x))), x)
    half = rotate_hue(rotate_hue(x, torch.full((len(x),), 1.0)), torch.full((len(x),), -1.0))
    torch.testing.assert_close(half, x, atol=1e-5, rtol=1e-5)


def test_brightness_shifts_each_image_by_one_amount():
    x, view = _colour_view(brightness=0.8)
    shift = (view - x).mean((1, 2, 3))
    torch.testing.assert_close(view - x, shift.view(-1, 1, 1, 1).expand_as(x))
    assert shift.abs().max() <= 0.8 + 1e-6 and shift.std() > 0.3  # uniform on [-0.8, 0.8]: 0.46


def test_jitter_probability_leaves_the_other_views_untouched():
    colour = {"contrast": 0.4, "saturation": 0.4, "hue": 0.1, "brightness": 0.5}
    x, view = _colour_view(jitter=0.3, **colour)
    untouched = (view == x).all(3).all(2).all(1)
    assert 0.6 < untouched.float().mean() < 0.8  # jittered with probability 0.3
    _, never = _colour_view(jitter=0.0, **colour)
    assert torch.equal(never, x)
    _, always = _colour_view(jitter=1.0, **colour)
    assert not (always == x).all(3).all(2).all(1).any()


def test_new_view_options_off_draw_exactly_what_the_views_drew_before():
    x = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    usual = {"min_area": 0.2, "degrees": 0.0, "contrast": 0.4, "saturation": 0.4, "grayscale": 0.2}
    before = ImageViews(**usual)(x, torch.Generator().manual_seed(7))
    off = ImageViews(**usual, brightness=0.0, hue=0.0, jitter=1.0)
    torch.testing.assert_close(off(x, torch.Generator().manual_seed(7)), before, rtol=0, atol=0)
    changed = ImageViews(**usual, hue=0.1)(x, torch.Generator().manual_seed(7))
    assert not torch.equal(changed, before)
    for kwargs in ({"hue": 0.6}, {"jitter": 1.5}, {"brightness": -0.1}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            ImageViews(**kwargs)
    assert ImageViews(hue=0.1).colour and not ImageViews(brightness=0.4, jitter=0.8).colour


def test_colour_views_need_rgb_and_fractions():
    with pytest.raises(ValueError, match="RGB"):
        ImageViews(grayscale=0.2)(torch.rand(2, 1, 28, 28))
    for option in ("saturation", "channel_gain", "grayscale"):
        with pytest.raises(ValueError, match=option):
            ImageViews(**{option: 1.5})
    assert not ImageViews().colour and ImageViews(channel_gain=0.1).colour


def test_views_need_image_batches():
    with pytest.raises(ValueError, match="x: expected images"):
        ImageViews()(torch.rand(4, 28, 28))


def test_multi_view_training_runs_and_two_views_match_the_pairwise_formula():
    torch.manual_seed(0)
    data = torch.randn(256, 4)
    config = TrainConfig(steps=5, batch_size=64, warmup=1, n_views=3, progress=False, device="cpu")
    history = train_jepa(MLP(4, 4, 16, 1), MLP(4, 4, 8, 1), VectorViews(0.1), data, config)
    assert len(history.loss) == 5 and np.isfinite(history.loss).all()
    with pytest.raises(ValueError, match="n_views"):
        TrainConfig(n_views=1)


def test_recipes_name_their_variants():
    recipe = image_jepa.recipe_for("fmnist-cnn", "default")
    assert (recipe.dataset, recipe.architecture, recipe.n_train) == (
        "fashion-mnist",
        "resnet",
        None,
    )
    assert recipe.variant("default") == "default" and recipe.epochs(60000) == pytest.approx(
        image_jepa.EPOCHS, 0.01
    )
    small = image_jepa.recipe_for("mnist-cnn", "default", regulariser="moments", n_train=1000)
    assert small.variant("default") == "default-moments-n1000" and not small.flip
    assert small.steps == image_jepa.MIN_STEPS  # small sets get more passes, not fewer steps
    wide = image_jepa.recipe_for("fmnist-cnn", "ci", width=64, regulariser="none")
    assert wide.variant("ci") == "ci-none-w64" and wide.arch_kwargs()["width"] == 64
    short = image_jepa.recipe_for("fmnist-cnn", "default", steps=150, batch_size=64, lr=1e-3)
    assert short.variant("default") == "default-steps150-batchsize64-lr0.001"
    assert image_jepa.recipe_for("fmnist-cnn-short").architecture == "cnn"
    assert image_jepa.recipe_for("fmnist-cnn-n1000").variant("default") == "default-n1000"
    assert image_jepa.recipe_for("fmnist-vit", "ci").n_train == image_jepa.CI_TRAIN_SIZE
    with pytest.raises(ValueError, match="name"):
        image_jepa.recipe_for("cifar-cnn")
    cifar = image_jepa.recipe_for("cifar10-cnn")
    assert (cifar.dataset, cifar.architecture, cifar.input_size()) == (
        "cifar10",
        "resnet",
        (3, 32, 32),
    )
    assert cifar.arch_kwargs()["in_channels"] == 3 and cifar.views().colour
    assert cifar.epochs(50000) == pytest.approx(image_jepa.CIFAR_EPOCHS, 0.01)
    no_gray = image_jepa.recipe_for("cifar10-cnn", "ci", grayscale=0.0)
    assert cifar.variant("default") == "default" and no_gray.variant("ci") == "ci-grayscale0.0"
    assert not image_jepa.recipe_for("fmnist-cnn").views().colour
    with pytest.raises(ValueError, match="architecture: vit-projected is sized for 1 x 28 x 28"):
        image_jepa.recipe_for("cifar10-cnn", architecture="vit-projected").arch_kwargs()
    with pytest.raises(ValueError, match="scale"):
        image_jepa.recipe_for("fmnist-cnn", "huge")


def test_recipe_dicts_of_shipped_encoders_leave_out_the_colour_fields_while_off():
    """Every manifest entry's recipe is the recipe_dict the code builds now (the colour fields,
    added later, are left out while off), so the shipped weights still load; asdict would not
    match. Names without a manifest entry (e.g. cifar10-cnn before its run) are not shipped."""
    manifest = shipped.read_manifest()
    assert "fmnist-cnn" in manifest
    for name in image_jepa.shipped_encoders():
        recipe = image_jepa.recipe_for(name)
        assert manifest[name]["recipe"] == recipe.recipe_dict(), name
        left_out = set(asdict(recipe)) - set(recipe.recipe_dict())
        if recipe.dataset != "cifar10":  # trained before the fields existed: all of them off
            assert left_out == set(image_jepa.ADDED_FIELDS), name
        else:  # colour views and (the GPU recipe) bfloat16 are on, so they are in the dict
            assert left_out <= {"precision"} and recipe.recipe_dict()["hue"] == 0.1, name
    trained = image_jepa.load_shipped("fmnist-cnn")  # checksum and recipe checked
    assert trained.meta["in_channels"] == 1 and trained.encoder(
        torch.zeros(2, 1, 28, 28)
    ).shape == (2, 64)
    cifar = image_jepa.recipe_for("cifar10-cnn").recipe_dict()
    assert {k: cifar[k] for k in image_jepa.ADDED_FIELDS if k != "precision"} == {
        "saturation": 0.4, "channel_gain": 0.1, "grayscale": 0.2, "brightness": 0.8, "hue": 0.1,
        "jitter": 0.8,
    }  # fmt: skip
    assert "precision" not in cifar  # float32, the default: the run's resume file keeps its hash
    assert image_jepa.recipe_for("cifar10-resnet18").recipe_dict()["precision"] == "bfloat16"
    off = {"saturation": 0.0, "channel_gain": 0.0, "grayscale": 0.0, "brightness": 0.0, "hue": 0.0}
    grey = image_jepa.recipe_for("cifar10-cnn", **off, jitter=1.0)
    assert set(grey.recipe_dict()) == set(asdict(grey)) - set(image_jepa.ADDED_FIELDS)


def test_trained_encoder_is_cached_and_loads_as_a_backbone(tmp_path, monkeypatch):
    monkeypatch.setattr(image_jepa, "data_dir", lambda: tmp_path)
    options = dict(steps=3, n_train=128, batch_size=32, progress=False, device="cpu")
    first = image_jepa.train_image_encoder("fmnist-cnn", "ci", **options)
    assert first.path.exists() and first.path.parent == tmp_path / "encoders"
    x = first.inputs(torch.rand(5, 1, 28, 28))
    again = image_jepa.train_image_encoder("fmnist-cnn", "ci", **options)  # loads, no training
    assert torch.equal(again.encoder(x), first.encoder(x))
    assert again.history is not None and len(again.history.loss) == 3
    backbone = load_backbone("fmnist-cnn", weights=first.path)
    assert torch.allclose(backbone.encoder(x), first.encoder(x))
    assert abs(first.meta["mean"] - 0.286) < 0.05 and first.meta["recipe"]["steps"] == 3


def test_train_on_images_trains_the_recipe_on_given_images_without_caching(tmp_path, monkeypatch):
    monkeypatch.setattr(image_jepa, "data_dir", lambda: tmp_path)
    images = image_jepa.training_images("fashion-mnist", 96)
    options = dict(steps=2, batch_size=32, progress=False, device="cpu")
    trained = image_jepa.train_on_images(images, "fmnist-cnn", "ci", width=8, **options)
    assert trained.path is None and trained.meta["n_train"] == 96
    assert trained.meta["arch_kwargs"]["width"] == 8 and len(trained.history.loss) == 2
    assert not (tmp_path / "encoders").exists()
    assert trained.encoder(trained.inputs(images.images[:4])).shape == (4, 64)
    with pytest.raises(ValueError, match="n_train"):
        image_jepa.train_on_images(images, "fmnist-cnn", "ci", n_train=10, **options)


def test_nested_training_subsets():
    small = image_jepa.training_images("fashion-mnist", 100)
    large = image_jepa.training_images("fashion-mnist", 1000)
    assert torch.equal(large.images[:100], small.images)
    with pytest.raises(ValueError, match="n_train"):
        image_jepa.training_images("fashion-mnist", 10**6)


def test_linear_probe_on_separable_and_random_labels():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 600)
    features = rng.normal(size=(600, 5)) + 6 * np.eye(3, 5)[labels]
    assert linear_probe(features[:400], labels[:400], features[400:], labels[400:]) > 0.97
    noise = rng.normal(size=(600, 5))
    assert linear_probe(noise[:400], labels[:400], noise[400:], labels[400:]) < 0.5
    with pytest.raises(ValueError, match="features and labels"):
        linear_probe(features[:10], labels[:9], features, labels)


def test_embed_matches_the_encoder_in_eval_mode_and_restores_the_mode():
    encoder = SmallCNN(1, 8, 4).train()
    x = torch.rand(7, 1, 28, 28)
    z = embed(encoder, x, batch_size=3)
    assert encoder.training
    assert torch.allclose(z, encoder.eval()(x), atol=1e-6)


def test_auroc_agrees_with_scikit_learn_and_its_extremes():
    rng = np.random.default_rng(0)
    inliers, outliers = rng.normal(1, 1, 300), rng.normal(0, 1, 200)
    expected = roc_auc_score(np.r_[np.ones(300), np.zeros(200)], np.r_[inliers, outliers])
    assert auroc(inliers, outliers) == pytest.approx(expected, abs=1e-12)
    assert auroc([2, 3], [0, 1]) == 1.0 and auroc([0, 1], [2, 3]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5
    interval = bootstrap_auroc(inliers, outliers, n_boot=200)
    assert interval.low < interval.estimate < interval.high and interval.excludes(0.5)
    with pytest.raises(ValueError, match="inliers and outliers"):
        auroc([], [1.0])


def test_extremes_overlap_and_rank_agreement():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    scores = rng.normal(size=200)
    least, most = extremes(scores, labels, k=3)[2]
    members = np.flatnonzero(labels == 2)
    assert set(least) == set(members[np.argsort(scores[members])[:3]])
    assert scores[most[0]] == scores[members].max()
    assert tail_overlap(scores, scores, labels) == 1.0
    assert within_class_spearman(scores, 2 * scores + 1, labels) == pytest.approx(1.0)
    table = agreement({"a": scores, "b": scores + 0.01 * rng.normal(size=200)}, labels)
    row = table.iloc[0]
    assert row.spearman > 0.99 and row.tail_overlap > 0.8
    assert abs(row.spearman_shuffled) < 0.3 and row.tail_overlap_shuffled < 0.5


def test_per_class_is_balanced():
    images = ImageSet("toy", torch.rand(40, 1, 4, 4), torch.arange(40) % 4, list("abcd"))
    chosen = per_class(images, 3, seed=1)
    assert torch.equal(torch.bincount(chosen.labels), torch.full((4,), 3))
    with pytest.raises(ValueError, match="n: class"):
        per_class(images, 11)


def test_singular_vectors_of_a_linear_encoder_are_its_svd():
    torch.manual_seed(0)
    A = torch.randn(3, 12)
    encoder = torch.nn.Linear(12, 3, bias=False)
    encoder.weight.data.copy_(A)
    sigma, vectors = singular_vectors(encoder, torch.randn(1, 12), k=2)
    assert torch.allclose(sigma.float(), torch.linalg.svdvals(A), atol=1e-5)
    _, _, vh = torch.linalg.svd(A.double())
    for k in range(2):
        assert abs(float(vectors[k].double() @ vh[k])) == pytest.approx(1.0, abs=1e-5)


def test_out_of_domain_sets_hold_the_control_and_seven_sets():
    sets = ood.out_of_domain_sets("fashion-mnist", 20, seed=0, skip=100)
    assert list(sets)[0] == "Fashion-MNIST (other held-out images)" and "MNIST" in sets
    assert {"galaxies", "faces", "natural patches", "inverted", "edges", "rotated"} <= set(sets)
    assert all(s.images.shape[1:] == (1, 28, 28) and 0 < len(s) <= 20 for s in sets.values())
    held_out = image_jepa.held_out_images("fashion-mnist")
    assert torch.equal(
        sets["Fashion-MNIST (other held-out images)"].images, held_out.images[100:120]
    )
    assert torch.allclose(sets["inverted"].images, 1 - held_out.images[120:140])
    mirror = ood.out_of_domain_sets("mnist", 10)
    assert "Fashion-MNIST" in mirror and len(image_jepa.held_out_images("mnist")) == 2000
    with pytest.raises(ValueError, match="in_domain"):
        ood.out_of_domain_sets("cifar", 10)


def test_scoring_sets_folders_and_spectra_of_a_small_encoder(tmp_path):
    from PIL import Image

    torch.manual_seed(0)
    encoder = SmallCNN(1, 6, 4, norm="group").eval()
    arch = {"in_channels": 1, "out_dim": 6, "width": 4, "norm": "group"}
    meta = {"mean": 0.3, "std": 0.35, "architecture": "cnn", "arch_kwargs": arch}
    trained = image_jepa.TrainedEncoder("toy", encoder, meta, None, tmp_path / "toy.pt")
    images = ImageSet("toy", torch.rand(6, 1, 28, 28), torch.tensor([0, 0, 0, 1, 1, 1]), ["a", "b"])
    scores = img.score_sets(trained, {"toy": images}, progress=False)["toy"]
    expected = jepa_score(encoder, trained.inputs(images)).numpy()
    assert np.allclose(scores, expected, rtol=1e-6)
    stats = sv.spectrum_statistics({"toy": trained}, images.subset(slice(0, 2)), k=3)
    assert stats.score_error.max() < 1e-5 and len(stats) == 2
    control = image_jepa.untrained_like(trained, images, seed=1)
    assert control.history is None and not torch.equal(
        control.encoder(trained.inputs(images)), encoder(trained.inputs(images))
    )
    for label in ("cat", "dog"):
        (tmp_path / "folder" / label).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.uint8(np.random.default_rng(i).random((30, 40, 3)) * 255)).save(
                tmp_path / "folder" / label / f"{i}.png"
            )
    paths, labels, classes = img.folder_images(tmp_path / "folder", per_class=2)
    assert classes == ["cat", "dog"] and list(labels) == [0, 0, 1, 1]
    assert img.thumbnails_of(paths, 16).shape == (4, 16, 16, 3)
    path = save_checkpoint(
        tmp_path / "toy.pt",
        encoder,
        meta={"image_size": 28, "in_channels": 1, **meta},
    )
    backbone = load_backbone("fmnist-cnn", weights=path)
    assert img.score_paths(backbone, paths, progress=False).shape == (4,)
    with pytest.raises(ValueError, match="image_dir"):
        img.folder_images(tmp_path / "missing")


def test_support_fraction_and_agreement_by_kind():
    image = torch.zeros(1, 4, 4)
    image[0, :2] = 1.0
    vectors = torch.zeros(2, 1, 4, 4)
    vectors[0, 0, 0, 0] = 1.0  # all energy on the support
    vectors[1] = 0.25  # spread evenly: energy share = pixel share
    assert np.allclose(sv.support_fraction(vectors, image), [1.0, 0.5])
    assert sv.support_share(image) == 0.5
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(2), 30)
    table = agreement({n: rng.normal(size=60) for n in ("a", "b", "c")}, labels)
    grouped = ex.agreement_by_kind(table, {"a": "JEPA", "b": "JEPA", "c": "ink"})
    assert set(grouped.index) == {"JEPA / ink", "JEPA / JEPA"}
    assert grouped.loc["JEPA / JEPA", "spearman"] == table.iloc[0].spearman


def test_train_command_writes_and_reuses_a_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(image_jepa, "data_dir", lambda: tmp_path)
    assert image_jepa.main(["train", "mnist-cnn", "--scale", "ci", "--n-train", "64"]) == 0
    path = Path(capsys.readouterr().out.strip())
    assert path == tmp_path / "encoders" / "mnist-cnn-ci-n64.pt" and path.exists()
    stamp = path.stat().st_mtime_ns
    assert image_jepa.main(["train", "mnist-cnn", "--scale", "ci", "--n-train", "64"]) == 0
    assert path.stat().st_mtime_ns == stamp  # loaded, not retrained
    with pytest.raises(SystemExit):
        image_jepa.main(["train", "cifar-cnn"])


def test_partial_spearman_removes_what_the_controls_explain():
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 200)
    ink = rng.normal(size=400)
    own = rng.normal(size=400)
    a, b = ink + 0.1 * rng.normal(size=400), ink + 0.1 * rng.normal(size=400)
    assert within_class_spearman(a, b, labels) > 0.9
    assert abs(ex.partial_spearman(a, b, [ink], labels)) < 0.15  # all of it was ink
    c, d = ink + own, ink + own + 0.1 * rng.normal(size=400)
    assert ex.partial_spearman(c, d, [ink], labels) > 0.8  # a shared part beyond ink
    table = agreement({"c": c, "d": d, "ink": ink}, labels, controls={"ink": ink})
    row = table.set_index("pair")
    assert row.loc["c / d", "partial_spearman"] > 0.8 and np.isnan(
        row.loc["c / ink", "partial_spearman"]
    )


def test_projected_encoders_score_samples_independently_and_calibrate_batchnorm():
    from jepabook.models import calibrate_batchnorm, resnet_encoder, vit_encoder

    torch.manual_seed(0)
    x = torch.randn(6, 1, 28, 28)
    for encoder in (resnet_encoder(width=8, out_dim=16), vit_encoder(dim=32, depth=1, out_dim=16)):
        encoder.eval()
        assert encoder(x).shape == (6, 16) and encoder.backbone(x).shape[0] == 6
        torch.testing.assert_close(encoder(x[:2]), encoder(x)[:2])  # no interaction in eval mode
    encoder = resnet_encoder(width=8)
    calibrate_batchnorm(encoder, 3 + 2 * torch.randn(64, 1, 28, 28))
    stem = encoder.backbone.features[1]
    assert not encoder.training and stem.momentum == 0.1
    assert stem.running_mean.abs().max() > 0.1  # the data's statistics, not the initial zeros
