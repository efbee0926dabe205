"""Train "cifar10-resnet18" (the GPU recipe) within a time budget, as one run on a lent GPU.

    PYTHONPATH=. python benchmarks/cifar_gpu_run.py --train-seconds 330 --out OUT

1. times the recipe's training step on this device (two short runs; the first warms cuDNN up);
2. picks the largest number of passes over CIFAR-10 in EPOCH_MENU that fits the budget and sets
   `image_jepa.CIFAR_GPU_EPOCHS` to it (the code must then be given the same value: the recipe,
   and with it the resume file's name, depends on it);
3. trains with `ship(..., train_only=True)`, which leaves the finished run in its resume file (a
   later `make encoders ONLY=cifar10-resnet18` on any machine writes the weights, probes and manifest
   entry from it without training a step);
4. k-NN probes of the output and the backbone with all 50,000 training images as neighbours.

Writes OUT/cifar_gpu_run.json (step time, passes, learning curve, k-NN) and prints a summary.
--scale ci runs the same path in seconds on a CPU (a dry run: nothing is written under data/encoders
but the ci resume file).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from jepabook import image_jepa
from jepabook.devices import device_description, resolve_device
from jepabook.models import build_encoder
from jepabook.probe import embed, knn_correct
from jepabook.train import TrainConfig, train_jepa

NAME = "cifar10-resnet18"
EPOCH_MENU = (1000, 800, 600, 500, 400, 300, 250, 200, 150, 120, 100, 80, 60, 50, 40, 30, 20, 10)
EVAL_OVERHEAD = 1.15  # the 21 learning-curve evaluations and the resume saves, on top of the steps


def step_seconds(recipe: image_jepa.ImageRecipe, data: torch.Tensor, device: str) -> float:
    """Seconds per training step of `recipe` on `device`: (time of 60 steps - time of 10) / 50."""

    def run(steps: int) -> float:
        encoder = build_encoder(recipe.architecture, **recipe.arch_kwargs())
        config = TrainConfig(
            steps=steps, batch_size=recipe.batch_size, lr=recipe.lr, lam=recipe.lam,
            n_views=recipe.n_views, eval_every=10**9, device=device, progress=False,
            precision=recipe.precision,
        )  # fmt: skip
        return train_jepa(encoder, None, recipe.views(), data, config).elapsed_s

    run(10)  # warm-up: cuDNN picks its kernels
    short, long = run(10), run(60)
    return (long - short) / 50


def chosen_epochs(seconds_per_step: float, budget_s: float, batch_size: int) -> int:
    """The largest entry of EPOCH_MENU whose steps (with EVAL_OVERHEAD) fit in budget_s."""
    steps_per_epoch = 50000 / batch_size
    affordable = budget_s / (EVAL_OVERHEAD * seconds_per_step * steps_per_epoch)
    return next((e for e in EPOCH_MENU if e <= affordable), EPOCH_MENU[-1])


def full_knn(scale: str) -> dict[str, float]:
    """k-NN accuracy (k = 20) of the finished run's output and backbone, 50,000 neighbours."""
    encoder, _ = finished_run(scale)
    encoder.to(resolve_device("auto"))
    recipe = image_jepa.recipe_for(NAME, scale)
    n_fit, n_test = image_jepa.PROBE_SIZES[scale]
    fit, test = image_jepa.probe_sets("cifar10", n_fit, n_test)
    train = image_jepa.training_images("cifar10", recipe.n_train)
    meta = {"mean": float(train.images.mean()), "std": float(train.images.std())}
    result = {}
    for label, module in (("output", encoder), ("backbone", encoder.backbone)):
        a = embed(module, image_jepa.normalise(fit.images, meta))
        b = embed(module, image_jepa.normalise(test.images, meta))
        result[label] = float(knn_correct(a, fit.labels, b, test.labels).mean())
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-seconds", type=float, default=330.0)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--scale", default="default", choices=["ci", "default"])
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    device = str(resolve_device("auto"))
    started = time.time()
    recipe = image_jepa.recipe_for(NAME, args.scale)
    train = image_jepa.training_images("cifar10", recipe.n_train)
    meta = {"mean": float(train.images.mean()), "std": float(train.images.std())}
    data = image_jepa.normalise(train.images, meta).to(device)
    per_step = step_seconds(recipe, data, device)
    epochs = chosen_epochs(per_step, args.train_seconds, recipe.batch_size)
    if args.scale == "default":
        image_jepa.CIFAR_GPU_EPOCHS = epochs
    recipe = image_jepa.recipe_for(NAME, args.scale)
    print(f"{device_description(torch.device(device))}: {per_step * 1e3:.1f} ms per step of "
          f"{recipe.batch_size}; {epochs} passes = {recipe.steps} steps", flush=True)  # fmt: skip
    image_jepa.ship(NAME, args.scale, device=device, progress=False, train_only=True)
    _, history = finished_run(args.scale)
    summary = {
        "name": NAME,
        "device": history["device"],
        "torch": torch.__version__,
        "seconds_per_step": round(per_step, 5),
        "epochs": epochs,
        "steps": recipe.steps,
        "training_s": round(history["elapsed_s"], 1),
        "learning_curve": {
            "step": history["eval_step"],
            "held_out_sigreg": history["held_out_sigreg"],
            **history["evaluations"],
        },
        "knn_50000": full_knn(args.scale),
        "wall_s": round(time.time() - started, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "cifar_gpu_run.json").write_text(json.dumps(summary, indent=1))
    curve = summary["learning_curve"]
    for i in range(0, len(curve["step"]), max(1, math.ceil(len(curve["step"]) / 10))):
        print(f"step {curve['step'][i]:6d}  k-NN output {curve['knn'][i]:.3f}  "
              f"backbone {curve['knn_backbone'][i]:.3f}")  # fmt: skip
    print("k-NN, 50,000 neighbours:", summary["knn_50000"], f"wall {summary['wall_s']} s")
    return 0


def finished_run(scale: str) -> tuple[torch.nn.Module, dict]:
    """(encoder with the resume file's weights, the run's history as a dict)."""
    recipe = image_jepa.recipe_for(NAME, scale)
    state = torch.load(image_jepa.resume_path(NAME, scale), map_location="cpu", weights_only=True)
    encoder = build_encoder(recipe.architecture, **recipe.arch_kwargs())
    encoder.load_state_dict(state["modules"][0])
    return encoder, state["history"]


if __name__ == "__main__":
    raise SystemExit(main())
