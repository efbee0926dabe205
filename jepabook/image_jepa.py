"""Gaussian-embedding JEPAs on real images: views, training, linear probes and cached checkpoints.

Encoders trained here are named "<dataset>-<architecture>" (for example "fmnist-cnn") and cached as
checkpoints under `data_dir()/encoders/<name>-<variant>.pt`, each carrying the `meta` needed to
rebuild it from the file alone.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from jepabook.models import build_encoder
from jepabook.paths import data_dir
from jepabook.train import checkpoint_meta, load_checkpoint

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
