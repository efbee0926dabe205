"""Fixtures shared by the test modules."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from jepabook.models import build_encoder
from jepabook.train import save_checkpoint

SMALL_CNN_META = {
    "architecture": "cnn", "arch_kwargs": {"in_channels": 1, "out_dim": 16, "width": 8},
    "dataset": "fashion-mnist", "image_size": 28, "in_channels": 1, "mean": 0.286, "std": 0.353,
    "embed_dim": 16,
}  # fmt: skip


@pytest.fixture(scope="session")
def small_cnn_weights(tmp_path_factory) -> Path:
    """A small trained-here-style fmnist-cnn checkpoint (K=16, D=784), random weights, seed 0."""
    torch.manual_seed(0)
    encoder = build_encoder("cnn", **SMALL_CNN_META["arch_kwargs"])
    path = tmp_path_factory.mktemp("weights") / "fmnist-cnn.pt"
    return save_checkpoint(path, encoder, meta=SMALL_CNN_META)
