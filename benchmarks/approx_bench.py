"""The approximate JEPA-SCORE (`method="approx"`) against the exact one, measured in one run.

    OMP_NUM_THREADS=1 python benchmarks/approx_bench.py --quick      # Fashion-MNIST encoders only
    OMP_NUM_THREADS=1 python benchmarks/approx_bench.py --markdown benchmarks/results/approx_bench_cpu.md

For each case (an encoder, in-distribution images and outlier images): the exact `jepa_score` of
every image, timed, then for each (probes b, steps s) of the sweep the approximation, timed on the
same images in the same process and threads. Reported per setting: Jacobian products per image
(exact: K vector-Jacobian products; approx: (b s + 1) vector-Jacobian plus as many Jacobian-vector
products, the + 1 for the dead-row detection), the wall time ratio exact / approx, Spearman's rank
correlation with the exact scores over all images of the case, the median and largest relative
error |approx - exact| / |exact|, the mean bias and spread of approx - exact (in score units) beside
the spread of the exact scores, the mean reported standard error, and the outlier-detection AUROC
(lower score = outlier) of the approximation minus that of the exact score.

Cases (`CASES`): the shipped Fashion-MNIST JEPAs (`fmnist-cnn`, `fmnist-vit`; K = 64) on
Fashion-MNIST test images against MNIST digits; the ImageNet MobileNetV2 (`mobilenetv2-in1k`,
K = 1280) on CIFAR-10 test images upsampled to 64 px against Fashion-MNIST garments (grey, as RGB).
The exact score of the MobileNetV2 at 64 px takes about 10-20 s per image on one CPU core, so that
case uses few images and is left out by --quick.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from jepabook.backbones import load_backbone
from jepabook.datasets import cifar10, fashion_mnist, mnist_digits
from jepabook.score import jepa_score, jepa_score_with_error

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@dataclass(frozen=True)
class Case:
    name: str
    backbone: str
    n: int  # images per side (in-distribution and outliers)
    sweep: tuple[tuple[int, int], ...]  # (probes, steps)
    quick: bool


CASES = [
    Case("fmnist-cnn", "fmnist-cnn", 32, ((4, 2), (4, 4), (8, 4), (8, 8)), True),
    Case("fmnist-vit", "fmnist-vit", 32, ((4, 2), (4, 4), (8, 4), (8, 8)), True),
    Case("mobilenetv2-64px", "mobilenetv2-in1k", 4, ((4, 4), (8, 4), (8, 8), (16, 8)), False),
]


def case_data(case: Case) -> tuple[Callable, torch.Tensor, torch.Tensor]:
    """The encoder (B, ...) -> (B, K), in-distribution inputs (n, ...) and outliers (n, ...)."""
    if case.backbone.startswith("fmnist"):
        encoder = load_backbone(case.backbone).encoder.eval()
        inside = fashion_mnist("test").images[: case.n]
        outside = mnist_digits().images[torch.randperm(10000, generator=_gen())[: case.n]]
        return encoder, inside, outside
    encoder = load_backbone(case.backbone, image_size=64).encoder.eval()
    inside = _imagenet_input(cifar10("test").images[: case.n])
    garments = fashion_mnist("test").images[: case.n].expand(-1, 3, -1, -1)
    return encoder, inside, _imagenet_input(garments)


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def _imagenet_input(images: torch.Tensor) -> torch.Tensor:
    """(n, 3, h, w) in [0, 1] -> (n, 3, 64, 64) ImageNet-normalised."""
    x = F.interpolate(images, size=64, mode="bilinear", align_corners=False)
    return ((x - IMAGENET_MEAN) / IMAGENET_STD).contiguous()


def run_case(case: Case, quick: bool) -> list[dict]:
    """One row per sweep setting (and one for the exact score) of this case."""
    encoder, inside, outside = case_data(case)
    x = torch.cat([inside, outside])
    labels = np.r_[np.zeros(len(inside)), np.ones(len(outside))]  # 1 = outlier
    with torch.no_grad():
        K = encoder(x[:1]).shape[1]
    jepa_score(encoder, x[:2])  # warm-up
    start = time.perf_counter()
    exact = jepa_score(encoder, x).numpy()
    t_exact = time.perf_counter() - start
    auroc_exact = roc_auc_score(labels, -exact)
    rows = [_row(case, K, "exact", K, t_exact, t_exact, exact, exact, None, auroc_exact)]
    sweep = case.sweep[1:3] if quick else case.sweep
    for b, s in sweep:
        jepa_score_with_error(encoder, x[:2], probes=b, steps=s)  # warm-up
        start = time.perf_counter()
        approx, stderr = jepa_score_with_error(encoder, x, probes=b, steps=s, seed=0)
        t = time.perf_counter() - start
        products = 2 * (b * s + 1)
        auroc = roc_auc_score(labels, -approx.numpy())
        rows.append(
            _row(case, K, f"approx b={b} s={s}", products, t_exact, t, exact,
                 approx.numpy(), stderr.numpy(), auroc - auroc_exact)
        )  # fmt: skip
    return rows


def _row(case, K, method, products, t_exact, t, exact, approx, stderr, auroc) -> dict:
    diff = approx - exact
    relative = np.abs(diff) / np.abs(exact)
    return {
        "case": case.name,
        "K": K,
        "images": len(exact),
        "method": method,
        "products/image": products,
        "products exact/approx": K / products,
        "wall s": t,
        "wall exact/approx": t_exact / t,
        "Spearman": spearmanr(approx, exact)[0],
        "median rel. err": float(np.median(relative)),
        "max rel. err": float(relative.max()),
        "bias": float(diff.mean()),
        "sd(approx-exact)": float(diff.std()),
        "sd(exact)": float(exact.std()),
        "mean stderr": float(np.mean(stderr)) if stderr is not None else 0.0,
        "AUROC (exact) or diff": auroc,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="Fashion-MNIST cases, 2 settings")
    parser.add_argument("--cases", nargs="*", help="case names (default: all)")
    parser.add_argument("--markdown", metavar="FILE", help="also write the table as Markdown")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    cases = [c for c in CASES if (not args.quick or c.quick)]
    if args.cases:
        cases = [c for c in cases if c.name in args.cases]
    import pandas as pd

    started = time.perf_counter()
    frame = pd.DataFrame([row for c in cases for row in run_case(c, args.quick)])
    elapsed = time.perf_counter() - started
    header = (
        f"CPU: {platform.processor() or platform.machine()} ({_cpu_model()}), "
        f"torch threads: {torch.get_num_threads()}, torch {torch.__version__}, "
        f"total {elapsed:.0f} s"
    )
    table = frame.to_markdown(index=False, floatfmt=".3g")
    print(header)
    print(table)
    if args.markdown:
        command = "python benchmarks/approx_bench.py" + (" --quick" if args.quick else "")
        with open(args.markdown, "w", encoding="utf-8") as handle:
            handle.write(f"# Approximate vs exact JEPA-SCORE\n\nMade by `OMP_NUM_THREADS=1 "
                         f"{command} --markdown {args.markdown}`.\n\n{header}\n\n{table}\n")  # fmt: skip


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


if __name__ == "__main__":
    main()
