"""Shipped encoders: the `make encoders` path at ci scale, checksums, recipe checks, resuming, probes,
and names whose weights are not trained yet."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from jepabook import image_jepa, shipped
from jepabook.backbones import MissingWeightsError, load_backbone
from jepabook.chapters import encoders
from jepabook.losses import VectorViews
from jepabook.models import MLP, build_encoder
from jepabook.probe import (
    knn_correct,
    paired_accuracy_difference,
    probe_outcomes,
    standard_probes,
)
from jepabook.train import TrainConfig, train_jepa


@pytest.fixture(scope="module")
def ci_shipped(tmp_path_factory):
    """mnist-cnn trained through `ship` at ci scale into a temporary encoders folder."""
    folder = tmp_path_factory.mktemp("encoders")
    # The variable is set only while shipping, so that later tests see the real folder.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JEPABOOK_ENCODERS", str(folder))
        entry = image_jepa.ship("mnist-cnn", "ci", device="cpu", progress=False)
    return folder, entry


def test_ship_writes_weights_and_a_complete_manifest_entry(ci_shipped):
    folder, entry = ci_shipped
    assert (folder / "mnist-cnn.pt").stat().st_size < 5_000_000
    assert set(entry) >= {
        "recipe", "data", "steps", "epochs", "wall_time_s", "device", "probes", "sha256", "commit",
        "learning_curve",
    }  # fmt: skip
    assert entry["recipe"] == image_jepa.recipe_for("mnist-cnn", "ci").recipe_dict()
    assert entry["steps"] == 40 and entry["epochs"] == pytest.approx(40 * 64 / 2000)
    assert entry["sha256"] == shipped.sha256(folder / "mnist-cnn.pt")
    probes = entry["probes"]
    assert {"pixels", "output", "random output", "backbone", "random backbone"} <= set(probes)
    low, estimate, high = (probes["output"]["linear"][i] for i in (1, 0, 2))
    assert 0.1 < low <= estimate <= high <= 1
    assert "linear_minus_pixels" in probes["output"] and "knn_minus_random" in probes["backbone"]
    assert not (folder / "resume").exists() or not any((folder / "resume").iterdir())
    assert {"knn", "knn_backbone"} <= set(entry["learning_curve"])


def test_loading_checks_the_checksum_and_the_recipe(ci_shipped, monkeypatch):
    folder, _ = ci_shipped
    monkeypatch.setenv("JEPABOOK_ENCODERS", str(folder))
    ci_recipe = image_jepa.recipe_for("mnist-cnn", "ci").recipe_dict()
    assert shipped.verified_path("mnist-cnn", ci_recipe) == folder / "mnist-cnn.pt"
    with pytest.raises(shipped.ShippedWeightsError, match="recipe of mnist-cnn changed.*steps"):
        image_jepa.load_shipped("mnist-cnn")  # the default recipe is not what was trained here
    with pytest.raises(shipped.ShippedWeightsError, match="make encoders ONLY=fmnist-vit"):
        image_jepa.load_shipped("fmnist-vit")  # nothing shipped in this folder
    copy = folder.parent / "altered"
    copy.mkdir()
    (copy / "manifest.json").write_text((folder / "manifest.json").read_text())
    data = bytearray((folder / "mnist-cnn.pt").read_bytes())
    data[-10] ^= 0xFF
    (copy / "mnist-cnn.pt").write_bytes(bytes(data))
    monkeypatch.setenv("JEPABOOK_ENCODERS", str(copy))
    with pytest.raises(shipped.ShippedWeightsError, match="sha256"):
        shipped.verified_path("mnist-cnn", ci_recipe)


def _short_run(resume_path=None, evaluate=None):
    torch.manual_seed(0)
    encoder, predictor = MLP(4, 4, 16, 1), MLP(4, 4, 8, 1)
    data = torch.randn(256, 4, generator=torch.Generator().manual_seed(3))
    config = TrainConfig(
        steps=6, batch_size=32, warmup=2, eval_every=4, device="cpu", progress=False
    )
    history = train_jepa(
        encoder, predictor, VectorViews(0.1), data, config,
        evaluate=evaluate, resume_path=resume_path, save_every=3,
    )  # fmt: skip
    return encoder, history


def test_an_interrupted_run_resumes_to_the_same_weights(tmp_path):
    whole, whole_history = _short_run()
    calls = []

    def interrupt_at_step_4(encoder):
        calls.append(1)
        if len(calls) == 2:  # evaluations run at steps 0 and 4: stop at 4, after the save at 3
            raise KeyboardInterrupt
        return {"calls": float(len(calls))}

    resume = tmp_path / "run.pt"
    with pytest.raises(KeyboardInterrupt):
        _short_run(resume, interrupt_at_step_4)
    assert resume.exists()
    resumed, history = _short_run(resume, lambda encoder: {"calls": 0.0})
    x = torch.randn(8, 4)
    torch.testing.assert_close(resumed(x), whole(x))
    assert history.step == list(range(6)) and history.loss == pytest.approx(whole_history.loss)
    assert history.evaluations["calls"] == [1.0, 0.0, 0.0]  # steps 0 (first run), 4, 5


def test_resuming_refuses_another_config(tmp_path):
    resume = tmp_path / "run.pt"
    _short_run(resume)
    torch.manual_seed(0)
    config = TrainConfig(steps=7, batch_size=32, device="cpu", progress=False)
    with pytest.raises(ValueError, match="resume_path.*steps"):
        train_jepa(MLP(4, 4, 16, 1), None, VectorViews(0.1), torch.randn(64, 4), config,
                   resume_path=resume)  # fmt: skip


def test_knn_probe_reads_clusters_and_fails_on_shuffled_labels():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 5
    labels = rng.integers(0, 3, 600)
    features = centres[labels] + rng.normal(size=(600, 16))
    correct = knn_correct(features[:400], labels[:400], features[400:], labels[400:])
    assert correct.shape == (200,) and correct.mean() > 0.97
    shuffled = knn_correct(
        features[:400], rng.permutation(labels[:400]), features[400:], labels[400:]
    )
    assert shuffled.mean() < 0.55
    with pytest.raises(ValueError, match="k:"):
        knn_correct(features[:10], labels[:10], features[400:], labels[400:], k=20)


def test_standard_probes_compare_each_representation_with_its_baselines():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 800)
    good = labels[:, None] * 3.0 + rng.normal(size=(800, 4))
    noise = rng.normal(size=(800, 4))
    fit, test = labels[:500], labels[500:]
    outcomes = {
        name: probe_outcomes(a[:500], fit, a[500:], test)
        for name, a in (("pixels", noise), ("output", good), ("random output", noise))
    }
    table = standard_probes(outcomes)
    assert table["output"]["linear"][0] > 0.9 and table["pixels"]["linear"][0] < 0.65
    assert table["output"]["linear_minus_pixels"][1] > 0.2  # the interval excludes 0
    assert table["output"]["knn_minus_random"][1] > 0.2
    assert "linear_minus_random" not in table["random output"]
    difference = paired_accuracy_difference(np.ones(50, bool), np.ones(50, bool))
    assert (difference.estimate, difference.low, difference.high) == (0.0, 0.0, 0.0)


def test_the_shipped_fmnist_cnn_learned_beyond_random_weights_and_is_not_below_pixels():
    """The shipped weights themselves (no training): a k-NN probe on 10,000 training images as
    neighbours and the first 2,000 test images is above the same network at random (the paired
    difference's interval above 0.1) and not below raw pixels (its interval reaches 0 or above; the
    encoders chapter shows it level with pixels under the full protocol)."""
    outcome = encoders.knn_against_baselines(image_jepa.load_shipped("fmnist-cnn"))
    learned = outcome["JEPA"]
    random = paired_accuracy_difference(learned, outcome["random weights"])
    assert random.low > 0.1, (learned.mean(), outcome["random weights"].mean())
    pixels = paired_accuracy_difference(learned, outcome["pixels"])
    assert pixels.high > 0, (learned.mean(), outcome["pixels"].mean())


def test_summary_and_learning_curves_read_what_ship_wrote(ci_shipped, monkeypatch):
    folder, entry = ci_shipped
    monkeypatch.setenv("JEPABOOK_ENCODERS", str(folder))
    summary = encoders.shipped_summary({"MNIST": "mnist-cnn"})
    assert summary.loc["MNIST", "steps"] == 40
    assert summary.loc["MNIST", "linear (output)"].startswith(
        f"{entry['probes']['output']['linear'][0]:.3f}"
    )
    curves = encoders.learning_curves({"MNIST": "mnist-cnn"}, scale="ci")
    assert set(curves.metric) == {"held_out_sigreg", "knn", "knn_backbone", "train_regulariser"}
    assert curves.step.max() == 39 and curves.epoch.max() == pytest.approx(40 * 64 / 2000)
    with pytest.raises(ValueError, match="rows: fmnist-vit"):
        encoders.shipped_summary({"ViT": "fmnist-vit"})


@pytest.fixture(scope="module")
def ci_cifar(tmp_path_factory):
    """cifar10-cnn trained through `ship` at ci scale (40 steps of 64 of 2,000 images) into a
    temporary encoders folder; its probes and learning curve use 500 training and 250 test images
    (instead of ci's 2,000 and 1,000) so that the 20 learning-curve evaluations take seconds."""
    folder = tmp_path_factory.mktemp("cifar")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("JEPABOOK_ENCODERS", str(folder))
        patch.setitem(image_jepa.PROBE_SIZES, "ci", (500, 250))
        entry = image_jepa.ship("cifar10-cnn", "ci", device="cpu", progress=False)
    return folder, entry


def test_ship_trains_cifar10_into_a_3_channel_encoder_that_loads_as_a_backbone(
    ci_cifar, monkeypatch
):
    folder, entry = ci_cifar
    recipe = image_jepa.recipe_for("cifar10-cnn", "ci")
    assert entry["recipe"] == recipe.recipe_dict() and entry["recipe"]["grayscale"] == 0.2
    assert entry["steps"] == 40 and entry["data"].endswith("held out: the 10,000 test images")
    assert {"pixels", "output", "random output", "backbone", "random backbone"} <= set(
        entry["probes"]
    )
    assert {"knn", "knn_backbone"} <= set(entry["learning_curve"])
    assert not (folder / "resume").exists() or not any((folder / "resume").iterdir())

    monkeypatch.setenv("JEPABOOK_ENCODERS", str(folder))
    trained = image_jepa.load_shipped("cifar10-cnn", "ci")  # checksum and ci recipe checked
    meta = trained.meta
    assert (meta["dataset"], meta["in_channels"], meta["image_size"]) == ("cifar10", 3, 32)
    assert meta["arch_kwargs"]["in_channels"] == 3 and meta["embed_dim"] == 64  # K = 64
    assert abs(meta["mean"] - 0.473) < 0.01 and abs(meta["std"] - 0.250) < 0.01  # all channels
    images = image_jepa.held_out_images("cifar10").subset(slice(0, 4))
    inputs = trained.inputs(images)
    with torch.no_grad():
        z = trained.encoder(inputs)
        assert z.shape == (4, 64) and torch.isfinite(z).all()
        assert trained.encoder.backbone(inputs).shape == (4, 4 * recipe.width)

    backbone = load_backbone("cifar10-cnn", weights=shipped.weights_path("cifar10-cnn"))
    assert (backbone.input_size, backbone.embed_dim, backbone.embedding) == (
        (3, 32, 32),
        64,
        "output",
    )
    photo = (images.images[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    x = backbone.preprocess(Image.fromarray(photo))  # the same normalisation as training
    torch.testing.assert_close(x, inputs[0], rtol=0, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(backbone.encoder(x[None]), z[:1], rtol=1e-4, atol=1e-5)
    features = load_backbone("cifar10-cnn", weights=folder / "cifar10-cnn.pt", embedding="backbone")
    assert features.embed_dim == 4 * recipe.width


def test_names_without_a_manifest_entry_are_not_shipped_and_say_how_to_train_them(
    tmp_path, monkeypatch
):
    """The registry lists names whose weights are not trained yet (cifar10-cnn until its long run
    has finished): they have no manifest entry, count as not shipped (no weights are faked), and
    loading them raises the error that says `make encoders ONLY=<name>` trains them and resumes
    an interrupted run. Every name with an entry loads, checksum and recipe checked."""
    manifest = shipped.read_manifest()
    names = image_jepa.shipped_encoders()
    assert "fmnist-cnn" in names and set(names) == set(manifest) & set(image_jepa.TRAINED_ENCODERS)
    for name in image_jepa.TRAINED_ENCODERS:
        if name in names:
            assert image_jepa.load_shipped(name).path == shipped.weights_path(name)
            continue
        with pytest.raises(
            shipped.ShippedWeightsError, match=f"not trained yet.*make encoders ONLY={name}"
        ):
            image_jepa.load_shipped(name)
        with pytest.raises(MissingWeightsError, match=f"make encoders ONLY={name}.*resum"):
            load_backbone(name)
    monkeypatch.setenv("JEPABOOK_ENCODERS", str(tmp_path))  # an empty folder: nothing trained
    assert image_jepa.shipped_encoders() == ()
    with pytest.raises(shipped.ShippedWeightsError, match="ONLY=cifar10-cnn.*resume"):
        image_jepa.load_shipped("cifar10-cnn")


def test_resnet18_is_he_et_al_s_cifar_layout():
    """The GPU recipe's network: ResNet-18 for 32 px (11,168,832 backbone parameters at width 64,
    as in CIFAR ResNet-18 without its classifier); half width has a quarter of them."""
    full = build_encoder("resnet18", in_channels=3, width=64)
    assert sum(p.numel() for p in full.backbone.parameters()) == 11_168_832
    half = build_encoder("resnet18", in_channels=3, width=32)
    n_half = sum(p.numel() for p in half.backbone.parameters())
    assert n_half == pytest.approx(11_168_832 / 4, rel=0.01)
    with torch.no_grad():
        assert half.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 64)
        assert half.backbone(torch.randn(2, 3, 32, 32)).shape == (2, 256)


def test_ship_train_only_leaves_the_finished_run_for_a_later_ship(tmp_path, monkeypatch):
    """`ship --train-only` (on a GPU, say) keeps the finished run in its resume file; a later `ship`
    (on a CPU) trains no step, keeps the run's history and device, and writes weights and entry."""
    monkeypatch.setenv("JEPABOOK_ENCODERS", str(tmp_path))
    monkeypatch.setitem(image_jepa.PROBE_SIZES, "ci", (300, 200))
    assert image_jepa.ship("cifar10-resnet18", "ci", device="cpu", train_only=True) is None
    resume = image_jepa.resume_path("cifar10-resnet18", "ci")
    assert resume.exists() and not shipped.weights_path("cifar10-resnet18").exists()
    state = torch.load(resume, weights_only=True)
    assert state["step"] == 40 and state["history"]["step"] == list(range(40))
    monkeypatch.setattr(image_jepa, "train_jepa", _no_training_step(image_jepa.train_jepa))
    state["history"]["device"] = "cuda: a GPU elsewhere"
    state["generator"] = torch.zeros(16, dtype=torch.uint8)  # the size of a CUDA generator's state
    torch.save(state, resume)
    entry = image_jepa.ship("cifar10-resnet18", "ci", device="cpu", progress=False)
    assert entry["device"] == "cuda: a GPU elsewhere" and not resume.exists()
    assert entry["recipe"]["architecture"] == "resnet18" and entry["recipe"]["batch_size"] == 64
    trained = image_jepa.load_shipped("cifar10-resnet18", "ci")
    assert trained.history.loss == state["history"]["loss"]
    assert trained.encoder.backbone(torch.zeros(1, 3, 32, 32)).shape == (1, 256)


def _no_training_step(train_jepa):
    """train_jepa that fails if asked to train: a finished run must only be read back."""

    def resumed_only(*args, **kwargs):
        def no_steps(*a, **k):
            raise AssertionError("a finished run trained again")

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(torch.optim.AdamW, "step", no_steps)
            return train_jepa(*args, **kwargs)

    return resumed_only
