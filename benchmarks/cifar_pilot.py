"""A short CIFAR-10 pilot of the `cifar10-cnn` recipe: does the pipeline learn, and what does an epoch cost?

    OMP_NUM_THREADS=1 python benchmarks/cifar_pilot.py [--epochs 2] [--n-train 10000] [--n-test 2000]

Trains two variants of the recipe through `image_jepa.train_on_images` (the shipped recipe's code
path, with fewer steps) on the first n_train CIFAR-10 training images: the recipe (width 32, colour
views) and the same at width 64. Each is probed by `image_jepa.probe_table`
(linear probe and k-NN fitted on those n_train images, tested on the first n_test test images)
beside raw pixels and the same network with random weights, with 95% bootstrap intervals.

It also times training steps without evaluations for fmnist-cnn and each CIFAR variant in the same
process, so that the ratio to fmnist-cnn (whose full run the manifest times on 2 CPU threads) gives
an estimate of a full CIFAR-10 epoch on 2 threads that does not depend on how busy the machine is.
Writes the table to stdout; benchmarks/results/cifar_pilot.txt keeps a copy.
"""

from __future__ import annotations

import argparse
import time

import torch

from jepabook import image_jepa as ij
from jepabook import shipped
from jepabook.models import build_encoder
from jepabook.train import TrainConfig, train_jepa

VARIANTS = {
    "recipe (w32, colour views)": {},
    "w64, colour views": {"width": 64},
}
COLUMNS = ("linear", "knn", "linear_minus_pixels", "linear_minus_random", "knn_minus_random")


def step_seconds(name: str, steps: int = 6, skip: int = 2, **overrides) -> float:
    """Seconds per training step (batch 256, 2 views, no evaluations) of `name`'s recipe, the mean
    of steps after the first `skip` (warm-up), on the CPU."""
    recipe = ij.recipe_for(name, **overrides)
    data = ij.training_images(recipe.dataset, 2048)
    inputs = ij.normalise(data.images, {"mean": 0.5, "std": 0.25})
    times = []

    def stamp(encoder) -> dict[str, float]:
        times.append(time.perf_counter())
        return {}

    torch.manual_seed(0)
    encoder = build_encoder(recipe.architecture, **recipe.arch_kwargs())
    config = TrainConfig(
        steps=steps + skip, batch_size=recipe.batch_size, warmup=1, lam=recipe.lam,
        eval_every=1, device="cpu", progress=False,
    )  # fmt: skip
    train_jepa(encoder, None, recipe.views(), inputs, config, evaluate=stamp)
    return (times[-1] - times[skip]) / (len(times) - 1 - skip)


def fmnist_manifest_step_seconds() -> tuple[float, str]:
    """Seconds per step of the shipped fmnist-cnn's full run (evaluations included), and its device."""
    entry = shipped.read_manifest()["fmnist-cnn"]
    return entry["wall_time_s"]["training"] / entry["steps"], entry["device"]


def interval(values: list[float]) -> str:
    estimate, low, high = values
    return (
        f"{estimate:+.3f} [{low:+.3f}, {high:+.3f}]"
        if low < 0
        else f"{estimate:.3f} [{low:.3f}, {high:.3f}]"
    )


def probe_rows(table: dict) -> list[str]:
    lines = [f"  {'feature':<16}" + "".join(f"{c:>26}" for c in COLUMNS)]
    for feature, row in table.items():
        cells = "".join(f"{interval(row[c]) if c in row else '':>26}" for c in COLUMNS)
        lines.append(f"  {feature:<16}{cells}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--n-train", type=int, default=10000)
    parser.add_argument("--n-test", type=int, default=2000)
    args = parser.parse_args()
    started = time.time()
    images = ij.training_images("cifar10", args.n_train)
    steps = ij.steps_for(args.epochs, args.n_train)
    lines = [
        f"CIFAR-10 pilot: {args.epochs:g} epochs ({steps} steps of 256) on the first {args.n_train} "
        f"training images; probes fitted on them, tested on the first {args.n_test} test images",
        f"threads: {torch.get_num_threads()}; recipe: {ij.recipe_for('cifar10-cnn').recipe_dict()}",
        "",
    ]
    print("\n".join(lines), flush=True)
    for label, overrides in VARIANTS.items():
        trained = ij.train_on_images(
            images, "cifar10-cnn", "default", steps=steps, device="cpu", progress=False,
            **overrides,
        )  # fmt: skip
        probe_start = time.time()
        table = ij.probe_table(trained, args.n_train, args.n_test)
        block = [
            f"{label}: training {trained.history.elapsed_s:.0f} s, probes "
            f"{time.time() - probe_start:.0f} s, held-out SIGReg {trained.history.held_out_sigreg[-1]:.2f}",
            *probe_rows(table),
            "",
        ]
        print("\n".join(block), flush=True)
        lines += block

    reference, device = fmnist_manifest_step_seconds()
    fmnist = step_seconds("fmnist-cnn")
    timing = [
        "Seconds per training step (batch 256, 2 views), this process, no evaluations:",
        f"  fmnist-cnn: {fmnist:.2f} s (the manifest's full run: {reference:.3f} s/step on {device})",
    ]
    per_epoch = ij.SPLIT_SIZES["cifar10"] / 256
    for label, overrides in VARIANTS.items():
        cifar = step_seconds("cifar10-cnn", **overrides)
        estimate = reference * cifar / fmnist * per_epoch
        total = estimate * ij.CIFAR_EPOCHS / 3600
        timing.append(
            f"  cifar10-cnn {label}: {cifar:.2f} s ({cifar / fmnist:.2f} x fmnist-cnn) -> about "
            f"{estimate:.0f} s per 50,000-image epoch on the manifest's 2 threads, "
            f"{total:.1f} h for {ij.CIFAR_EPOCHS} epochs"
        )
    timing.append(f"pilot wall time: {time.time() - started:.0f} s")
    print("\n".join(timing), flush=True)


if __name__ == "__main__":
    main()
