"""Helpers shared by the image chapters (encoders, extremes, out_of_domain, singular_vectors,
outlier_detection, curation): class-balanced subsets, image folders, the chapters' JEPAs, and
JEPA-SCORE of named image sets.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from jepabook.datasets import ImageSet
from jepabook.image_jepa import (
    load_shipped,
    train_image_encoder,
)
from jepabook.probe import embed, linear_probe
from jepabook.score import score_dataset


def per_class(images: ImageSet, n: int, seed: int = 0) -> ImageSet:
    """A class-balanced random subset: n images of every class, in class order."""
    if images.labels is None:
        raise ValueError(f"images: {images.name} has no labels")
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in range(len(images.classes)):
        members = torch.nonzero(images.labels == label).squeeze(1)
        if len(members) < n:
            raise ValueError(f"n: class {label} has only {len(members)} images, asked for {n}")
        chosen.append(members[torch.randperm(len(members), generator=generator)[:n]])
    return images.subset(torch.cat(chosen))


def folder_images(
    image_dir, per_class: int | None = None, seed: int = 0
) -> tuple[list, np.ndarray, list[str]]:
    """Images of a folder whose sub-folders are classes (an ImageNet-style layout).

    Returns (paths, labels (N,), classes); at most `per_class` random files of each class.
    """
    from pathlib import Path

    root = Path(image_dir)
    if not root.is_dir():
        raise ValueError(f"image_dir: expected a folder of class sub-folders, got {image_dir!r}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"image_dir: {image_dir} holds no class sub-folders")
    rng = np.random.default_rng(seed)
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.is_file())
        if per_class is not None and len(files) > per_class:
            files = [files[i] for i in sorted(rng.choice(len(files), per_class, replace=False))]
        paths += files
        labels += [label] * len(files)
    return paths, np.asarray(labels), classes


def score_paths(backbone, paths: list, *, batch_size: int = 8, progress: bool = True) -> np.ndarray:
    """JEPA-SCORE (N,) of image files under a pretrained backbone (its own preprocessing)."""
    from PIL import Image

    device = next(backbone.encoder.parameters()).device
    inputs = [backbone.preprocess(Image.open(p).convert("RGB")) for p in paths]
    return score_dataset(
        backbone.encoder, torch.stack(inputs).to(device), batch_size=batch_size, progress=progress
    )


def thumbnails_of(paths: list, size: int = 64) -> np.ndarray:
    """(N, size, size, 3) uint8 centre-cropped thumbnails of image files, for figures."""
    from PIL import Image, ImageOps

    return np.stack(
        [np.asarray(ImageOps.fit(Image.open(p).convert("RGB"), (size, size))) for p in paths]
    )


FMNIST_ENCODERS = {
    "CNN · SIGReg": ("fmnist-cnn", {}),
    "CNN · SIGReg, short training": ("fmnist-cnn-short", {}),
    "ViT · SIGReg, short training": ("fmnist-vit-short", {}),
    "CNN · moments, short training": ("fmnist-cnn-short", {"regulariser": "moments"}),
}
"""The extremes chapter's JEPAs: row label -> (trained-here name, recipe overrides). The converged
CNN first; the short-training encoders (600 steps, about 1.3 epochs) keep the book's first verdicts
computable beside it."""


def trained_encoders(
    scale: str, rows: dict | None = None, *, device: str = "auto", progress: bool = True
) -> dict:
    """{row label: TrainedEncoder} for rows {label: (name, recipe overrides)}: the shipped weights
    when there are no overrides (never trained here), else trained at `scale` (or loaded from cache)."""
    rows = FMNIST_ENCODERS if rows is None else rows
    return {
        label: train_image_encoder(name, scale, device=device, progress=progress, **options)
        if options
        else load_shipped(name)
        for label, (name, options) in rows.items()
    }


def probe_accuracies(encoders: dict, train: ImageSet, test: ImageSet) -> pd.Series:
    """Linear-probe test accuracy of each encoder's embedding, beside the raw-pixel probe."""

    accuracy = {"raw pixels": linear_probe(train.images, train.labels, test.images, test.labels)}
    for label, trained in encoders.items():
        fit, held = (embed(trained.encoder, trained.inputs(s)) for s in (train, test))
        accuracy[label] = linear_probe(fit, train.labels, held, test.labels)
    return pd.Series(accuracy, name="linear-probe accuracy")


def score_sets(trained, sets: dict, *, device=None, progress: bool = True) -> dict[str, np.ndarray]:
    """{set name: JEPA-SCORE (n,)} of every image set under one trained-here encoder."""
    return {
        name: score_dataset(
            trained.encoder, trained.inputs(images), device=device, progress=progress
        )
        for name, images in sets.items()
    }
