"""Reduced-precision Jacobians on CUDA: TF32 matrix products or bfloat16 autocast.

"float32" computes the Jacobian in plain float32 matrix products (TF32 off for the call);
"tf32" lets CUDA matrix products use TF32 tensor cores (10-bit mantissa inputs, float32 accumulate);
"bf16" runs the encoder's forward pass under bfloat16 autocast, so the backward passes run in the
dtypes autocast chose. The log-determinant is taken in float64 in every case. cuDNN convolutions
follow `torch.backends.cudnn.allow_tf32` (PyTorch's default: on), which this module leaves alone.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Literal

import torch

Precision = Literal["float32", "tf32", "bf16"]
PRECISIONS = ("float32", "tf32", "bf16")


def check_precision(precision: str, device: torch.device) -> None:
    """ValueError unless `precision` is known and, when reduced, the device is CUDA."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    if precision != "float32" and device.type != "cuda":
        raise ValueError(
            f"precision: {precision!r} is for CUDA devices; x is on {device.type}, use 'float32'"
        )


@contextlib.contextmanager
def matmul_precision(precision: Precision) -> Iterator[None]:
    """Float32 matrix products as `precision` asks ("tf32": TF32; otherwise full float32)."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if precision == "tf32" else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def with_precision(
    encoder: Callable[[torch.Tensor], torch.Tensor], precision: Precision
) -> Callable[[torch.Tensor], torch.Tensor]:
    """The encoder, run under bfloat16 autocast when precision is "bf16"; outputs in x's dtype."""
    if precision != "bf16":
        return encoder

    def autocast_encoder(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = encoder(x)
        return out.to(x.dtype)

    return autocast_encoder
