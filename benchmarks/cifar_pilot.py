"""A short CIFAR-10 pilot of the `cifar10-cnn` recipe: does the pipeline learn, and what does an epoch cost?

    OMP_NUM_THREADS=1 python benchmarks/cifar_pilot.py [--epochs 2] [--n-train 10000] [--n-test 2000]
    OMP_NUM_THREADS=1 python benchmarks/cifar_pilot.py --variants base lam0.05 ... [--epochs 6]

Trains two variants of the recipe through `image_jepa.train_on_images` (the shipped recipe's code
path, with fewer steps) on the first n_train CIFAR-10 training images: the recipe (width 32, colour
views) and the same at width 64. Each is probed by `image_jepa.probe_table`
(linear probe and k-NN fitted on those n_train images, tested on the first n_test test images)
beside raw pixels and the same network with random weights, with 95% bootstrap intervals.

It also times training steps without evaluations for fmnist-cnn and each CIFAR variant in the same
process, so that the ratio to fmnist-cnn (whose full run the manifest times on 2 CPU threads) gives
an estimate of a full CIFAR-10 epoch on 2 threads that does not depend on how busy the machine is.
Writes the table to stdout; benchmarks/results/cifar_pilot.txt keeps a copy.

`--variants NAME ...` compares recipe variants (RECIPE_VARIANTS: ImageRecipe overrides of the
cifar10-cnn recipe) instead: each trains for the same number of epochs on the same first n_train
images, and after every epoch the k-NN accuracy (k = 20, the learning curve's probe) of its output
and backbone is measured on the first n_test test images with the n_train images as neighbours,
beside the same network with random weights. Training seconds exclude those evaluations, so that
k-NN per epoch and per wall-second can both be read. benchmarks/results/cifar_pilot_variants.txt
keeps a copy.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from jepabook import image_jepa as ij
from jepabook import shipped
from jepabook.datasets import ImageSet
from jepabook.models import build_encoder
from jepabook.train import TrainConfig, train_jepa

VARIANTS = {
    "recipe (w32, colour views)": {},
    "w64, colour views": {"width": 64},
}
RECIPE_VARIANTS: dict[str, dict] = {
    "base": {},
    "lam0.05": {"lam": 0.05},
    "area0.08": {"min_area": 0.08},
    "simclr-colour": {"brightness": 0.8, "hue": 0.1, "jitter": 0.8},
    "views4": {"n_views": 4},
    "lr5e-3": {"lr": 5e-3},
    "w48": {"width": 48},
}
"""Overrides of the cifar10-cnn recipe compared by `--variants` (a name joining several with "+" combines
them, e.g. "lam0.05+area0.08"). simclr-colour: SimCLR's brightness shift (0.4 of the pixel range,
0.8 input units at the data's std of about 0.25) and hue (0.1 turn), the jitter applied to 80% of views."""
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


def variant_overrides(name: str) -> dict:
    """The ImageRecipe overrides of a variant name ("a+b" combines RECIPE_VARIANTS a and b)."""
    overrides: dict = {}
    for part in name.split("+"):
        if part not in RECIPE_VARIANTS:
            raise ValueError(
                f"variant: expected names from {sorted(RECIPE_VARIANTS)}, got {part!r}"
            )
        overrides.update(RECIPE_VARIANTS[part])
    return overrides


def knn_curve(
    images: ImageSet, overrides: dict, epochs: float, n_test: int
) -> tuple[list[dict], dict]:
    """Train the cifar10-cnn recipe with overrides on `images` for `epochs`, evaluating k-NN after
    every epoch: ([{"epoch", "step", "train_s", "knn", "knn_backbone"}, ...], random weights' k-NN)."""
    recipe = ij.recipe_for("cifar10-cnn", **overrides)
    steps = ij.steps_for(epochs, len(images), recipe.batch_size)
    meta = {"mean": float(images.images.mean()), "std": float(images.images.std())}
    probe = ij.learning_curve_probe("cifar10", meta, len(images), n_test)
    torch.manual_seed(recipe.seed)
    encoder = build_encoder(recipe.architecture, **recipe.arch_kwargs())
    random = ij.untrained_like(
        ij.TrainedEncoder("random", encoder, {
            **meta, "architecture": recipe.architecture, "arch_kwargs": recipe.arch_kwargs(),
            "dataset": "cifar10", "n_train": len(images),
        }, None, None), images,
    )  # fmt: skip
    baseline = probe(random.encoder)
    rows: list[dict] = []
    clock = {"start": time.perf_counter(), "evaluating": 0.0}

    def evaluate(module) -> dict[str, float]:
        begun = time.perf_counter()
        step = len(rows) * per_epoch
        result = probe(module)
        rows.append({
            "epoch": min(step + 1, steps) * recipe.batch_size / len(images), "step": step + 1,
            "train_s": begun - clock["start"] - clock["evaluating"], **result,
        })  # fmt: skip
        clock["evaluating"] += time.perf_counter() - begun
        return result

    per_epoch = ij.steps_for(1, len(images), recipe.batch_size)
    config = TrainConfig(
        steps=steps, batch_size=recipe.batch_size, lr=recipe.lr, weight_decay=recipe.weight_decay,
        warmup=max(1, steps // 20), lam=recipe.lam, n_views=recipe.n_views, eval_every=per_epoch,
        seed=recipe.seed, device="cpu", progress=False,
    )  # fmt: skip
    inputs = ij.normalise(images.images, meta)
    torch.manual_seed(recipe.seed)
    train_jepa(encoder, None, recipe.views(), inputs, config, evaluate=evaluate)
    rows[-1]["step"] = steps
    return rows, baseline


def half_width(p: float, n: int) -> float:
    """Half-width of a 95% normal-approximation interval of an accuracy p on n test images."""
    return 1.96 * math.sqrt(p * (1 - p) / n)


def compare_variants(names: list[str], epochs: float, n_train: int, n_test: int) -> None:
    """Print, per variant, its k-NN learning curve, then a summary table (the --variants mode)."""
    images = ij.training_images("cifar10", n_train)
    header = [
        f"CIFAR-10 recipe variants: {epochs:g} epochs on the first {n_train} training images; "
        f"k-NN (k = 20) with them as neighbours, tested on the first {n_test} test images",
        f"threads: {torch.get_num_threads()}; base recipe: {ij.recipe_for('cifar10-cnn').recipe_dict()}",
        "",
    ]
    print("\n".join(header), flush=True)
    summary = []
    for name in names:
        overrides = variant_overrides(name)
        rows, baseline = knn_curve(images, overrides, epochs, n_test)
        lines = [f"{name} {overrides}: random weights k-NN output {baseline['knn']:.3f}, "
                 f"backbone {baseline['knn_backbone']:.3f}",
                 f"  {'epoch':>6}{'step':>6}{'train s':>9}{'knn out':>9}{'knn bb':>9}"]  # fmt: skip
        for row in rows:
            lines.append(
                f"  {row['epoch']:6.2f}{row['step']:6d}{row['train_s']:9.0f}"
                f"{row['knn']:9.3f}{row['knn_backbone']:9.3f}"
            )
        print("\n".join(lines + [""]), flush=True)
        last, before = rows[-1], rows[-3] if len(rows) >= 3 else rows[0]
        slope = (last["knn_backbone"] - before["knn_backbone"]) / (last["epoch"] - before["epoch"])
        summary.append(
            f"  {name:<34}{last['train_s'] / last['step']:7.2f}{last['train_s']:8.0f}"
            f"{last['knn']:7.3f}{last['knn_backbone']:7.3f} +- {half_width(last['knn_backbone'], n_test):.3f}"
            f"{last['knn_backbone'] - baseline['knn_backbone']:+8.3f}"
            f"{1000 * (last['knn_backbone'] - baseline['knn_backbone']) / last['train_s']:+9.3f}"
            f"{slope:+9.4f}"
        )
    print("\n".join([
        "Summary (bb: backbone; gain: k-NN bb minus random weights'; per ks: gain per 1,000 training "
        "seconds on 1 thread; slope: k-NN bb per epoch over the last two epochs):",
        f"  {'variant':<34}{'s/step':>7}{'train s':>8}{'out':>7}{'bb':>7}{'':>9}{'gain':>8}"
        f"{'per ks':>9}{'slope':>9}",
        *summary,
    ]), flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--n-train", type=int, default=10000)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--variants", nargs="+", default=None, help="names of RECIPE_VARIANTS")
    args = parser.parse_args()
    if args.variants:
        compare_variants(args.variants, args.epochs, args.n_train, args.n_test)
        return
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
