"""JEPA-SCORE on an accelerator: agreement with the paper's listing and with the CPU, and timings.

    python benchmarks/device_check.py            # CUDA when present, else CPU only

Prints one table: for each model and batch size, the largest relative difference between
`jepa_score` and `reference_jepa_score` on the device, between `jepa_score` on the device and on the CPU,
and the wall time of each (after one warm-up call).
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from jepabook import jepa_score, reference_jepa_score
from jepabook.models import MLP, SmallCNN, TinyViT


def timed(fn, device: torch.device) -> tuple[torch.Tensor, float]:
    """(result, seconds) of fn(), synchronising the device around it."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - start


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float(((a - b).abs() / b.abs().clamp_min(1e-12)).max())


def cases() -> dict[str, tuple[torch.nn.Module, tuple[int, ...]]]:
    torch.manual_seed(0)
    return {
        "MLP 16->64": (MLP(16, 64), (16,)),
        "CNN 28x28->64": (SmallCNN(1, 64), (1, 28, 28)),
        "TinyViT 28x28->64": (TinyViT(out_dim=64), (1, 28, 28)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 3, 8, 64])
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu"
    print(f"device: {device} ({name}); torch {torch.__version__}")
    header = (
        f"{'model':<20}{'batch':>6}{'vs listing':>12}{'vs CPU':>10}{'listing s':>11}{'ours s':>9}"
    )
    print(header)
    print("-" * len(header))
    worst = 0.0
    for label, (model, shape) in cases().items():
        model = model.eval()
        for batch in args.batches:
            x = torch.randn(batch, *shape)
            cpu_scores = jepa_score(model, x)
            model.to(device)
            xd = x.to(device)
            jepa_score(model, xd[:1])  # warm-up
            reference_jepa_score(model, xd[:1])
            ours, ours_s = timed(lambda: jepa_score(model, xd), device)  # noqa: B023
            listing, listing_s = timed(lambda: reference_jepa_score(model, xd), device)  # noqa: B023
            vs_listing, vs_cpu = relative(ours, listing), relative(ours, cpu_scores)
            worst = max(worst, vs_listing)
            print(
                f"{label:<20}{batch:>6}{vs_listing:>12.2e}{vs_cpu:>10.2e}{listing_s:>11.3f}{ours_s:>9.3f}"
            )
            model.to("cpu")
    print(f"largest relative difference against the listing: {worst:.2e}")


if __name__ == "__main__":
    main()
