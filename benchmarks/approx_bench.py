"""The approximate JEPA-SCORE (`method="approx"`) against the exact one, measured in one run.

    OMP_NUM_THREADS=1 python benchmarks/approx_bench.py --quick      # Fashion-MNIST encoders, 2 settings
    OMP_NUM_THREADS=1 python benchmarks/approx_bench.py --markdown benchmarks/results/approx_bench_cpu.md

For each case (an encoder, in-distribution inputs and outliers): the exact score of every input,
timed, then for each (probes b, steps s) of the sweep the approximation, timed on the same inputs in
the same process and threads. Reported per setting: Jacobian products per input (exact: the backward
passes of the exact method; approx: (b s + 1) vector-Jacobian plus as many Jacobian-vector products,
the + 1 for the dead-row detection), the wall time ratio exact / approx, Spearman's rank correlation
with the exact scores over all inputs of the case, the median and largest relative error
|approx - exact| / |exact|, the mean bias and spread of approx - exact (in score units) beside the
spread of the exact scores, the mean reported standard error (0 with b = 1: one probe gives no
spread), and the outlier-detection AUROC (lower score = outlier) of the approximation minus that
of the exact score. The time of the whole run is in the results file's header (about 17 minutes
on a shared 2-core CPU); --quick takes well under a minute.

Cases (`CASES`; K the embedding width):
- `fmnist-cnn`, `fmnist-vit` (K = 64): the shipped Fashion-MNIST JEPAs on Fashion-MNIST test images
  against MNIST digits.
- `minilm-T8` (K = 381): all-MiniLM-L6-v2 as the text chapter differentiates it
  (`jepabook.chapters.text_encoder.WindowEncoder`: word-embedding rows of T = 8 word pieces ->
  the 381 live coordinates of the mean-pooled embedding), English fortunes about literature,
  science and education against German ones.
- `vit-512-random` (K = 512): a timm VisionTransformer of width 512, depth 6, 8 heads, patch 16 at
  32 px (4 patches + the class token, mean-pooled), random weights (seed 0); CIFAR-10 test images
  against Fashion-MNIST garments (grey, as RGB).
- `mobilenetv2-32px` (K = 1280): the ImageNet MobileNetV2 (`jepabook.natural_ood.imagenet_encoder`)
  on CIFAR-10 test images at 32 px against Fashion-MNIST garments. Its exact score is the
  factorised one (`natural_ood.score_images`: 320 backward passes, the fastest exact method here);
  an extra row gives the plain `jepa_score` (1,280 backward passes) against it: how far two exact
  float32 computations agree on this encoder.
- `mobilenetv2-32px-f64`: the same network and images in float64 (fewer images), exact and
  approximate: whether products in float64 remove the approximation's error; an extra row gives
  the float32 exact score against the float64 one.
The CIFAR JEPA is not a case: its weights are not shipped, and the partially trained file in
data/encoders/resume/ is a resume file, which `jepabook.backbones.load_backbone` does not read.
"""

from __future__ import annotations

import argparse
import copy
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from jepabook.backbones import load_backbone
from jepabook.datasets import cifar10, fashion_mnist, mnist_digits
from jepabook.models import use_explicit_attention
from jepabook.score import jepa_score, jepa_score_with_error

SHARED = (
    "The machine (2 cores) was shared with one training process and other work while this ran: "
    "wall-time ratios measured within the run are indicative, absolute seconds are not."
)
Scorer = Callable[[Callable, torch.Tensor], np.ndarray]


@dataclass(frozen=True)
class Case:
    name: str
    n: int  # inputs per side (in-distribution and outliers)
    sweep: tuple[tuple[int, int], ...]  # (probes, steps)
    quick: bool


@dataclass
class Setup:
    """What a case scores: the encoder, inputs (n, ...) and outliers (n, ...), the exact scorer
    (encoder, x) -> (B,) with its backward passes per input, and optional other exact scorers."""

    encoder: Callable
    inside: torch.Tensor
    outside: torch.Tensor
    exact: Scorer
    exact_passes: int | None = None  # None: K
    others: dict[str, tuple[Scorer, int | None]] | None = None


SWEEP = ((4, 2), (4, 4), (8, 4), (8, 8), (16, 8), (2, 12), (1, 24), (2, 32))
CASES = [
    Case("fmnist-cnn", 32, ((4, 2), (4, 4), (8, 4), (8, 8), (2, 16)), True),
    Case("fmnist-vit", 32, ((4, 2), (4, 4), (8, 4), (8, 8), (2, 16)), True),
    Case("minilm-T8", 16, SWEEP, False),
    Case("vit-512-random", 16, SWEEP, False),
    Case("mobilenetv2-32px", 16, SWEEP, False),
    Case("mobilenetv2-32px-f64", 4, ((8, 8), (16, 8), (2, 32)), False),
]


def _plain(encoder: Callable, x: torch.Tensor) -> np.ndarray:
    return jepa_score(encoder, x).numpy()


def case_data(case: Case) -> Setup:
    """The encoder, inputs and exact scorer of a case."""
    if case.name.startswith("fmnist"):
        encoder = load_backbone(case.name).encoder.eval()
        inside = fashion_mnist("test").images[: case.n]
        outside = mnist_digits().images[torch.randperm(10000, generator=_gen())[: case.n]]
        return Setup(encoder, inside, outside, _plain)
    if case.name == "minilm-T8":
        return _minilm(case.n)
    garments = fashion_mnist("test").images[: case.n].expand(-1, 3, -1, -1)
    garments = torch.nn.functional.pad(garments, (2, 2, 2, 2)).contiguous()  # 28 -> 32 px
    inside = cifar10("test").images[: case.n]
    if case.name == "vit-512-random":
        return Setup(_random_vit(), inside, garments, _plain)
    from jepabook.natural_ood import imagenet_encoder, score_images

    encoder = imagenet_encoder("mobilenetv2-in1k", 32)
    exact = lambda e, x: score_images(e, x)  # noqa: E731
    if not case.name.endswith("f64"):
        others = {"exact (jepa_score, 1280 passes)": (_plain, None)}
        return Setup(encoder, inside, garments, exact, 320, others)
    single = lambda e, x: score_images(encoder, x.float())  # noqa: E731
    encoder64 = copy.deepcopy(encoder).double()
    others = {"exact float32 (factorised)": (single, 320)}
    return Setup(encoder64, inside.double(), garments.double(), exact, 320, others)


def _minilm(n: int) -> Setup:
    from jepabook.chapters import text_encoder as te

    model = te.load_encoder()
    encoder = te.WindowEncoder(model).eval().requires_grad_(False)
    _, sets = te.fortune_sets(model, 8, n, seed=0)
    return Setup(
        encoder, encoder.rows(sets["in-domain (test)"].ids), encoder.rows(sets["German"].ids),
        _plain,
    )  # fmt: skip


def _random_vit() -> torch.nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    vit = VisionTransformer(
        img_size=32, patch_size=16, embed_dim=512, depth=6, num_heads=8, num_classes=0,
        global_pool="avg",
    )  # fmt: skip
    return use_explicit_attention(vit.eval().requires_grad_(False))


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def run_case(case: Case, quick: bool) -> list[dict]:
    """One row per sweep setting (and one per exact method) of this case."""
    setup = case_data(case)
    encoder, x = setup.encoder, torch.cat([setup.inside, setup.outside])
    labels = np.r_[np.zeros(len(setup.inside)), np.ones(len(setup.outside))]  # 1 = outlier
    with torch.no_grad():
        K = encoder(x[:1]).shape[1]
    passes = setup.exact_passes or K
    setup.exact(encoder, x[:2])  # warm-up
    t_exact, exact = _timed(lambda: setup.exact(encoder, x))
    auroc_exact = roc_auc_score(labels, -exact)
    rows = [
        _row(case, K, "exact", passes, passes, t_exact, t_exact, exact, exact, None, auroc_exact)
    ]
    for method, (scorer, other_passes) in (setup.others or {}).items():
        t, other = _timed(lambda scorer=scorer: scorer(encoder, x))
        auroc = roc_auc_score(labels, -other) - auroc_exact
        rows.append(
            _row(case, K, method, passes, other_passes or K, t_exact, t, exact, other, None, auroc)
        )
    sweep = case.sweep[1:3] if quick else case.sweep
    for b, s in sweep:
        jepa_score_with_error(encoder, x[:2], probes=b, steps=s)  # warm-up
        t, (approx, stderr) = _timed(
            lambda b=b, s=s: jepa_score_with_error(encoder, x, probes=b, steps=s, seed=0)
        )
        auroc = roc_auc_score(labels, -approx.numpy()) - auroc_exact
        rows.append(
            _row(case, K, f"approx b={b} s={s}", passes, 2 * (b * s + 1), t_exact, t, exact,
                 approx.numpy(), stderr.numpy(), auroc)
        )  # fmt: skip
    return rows


def _timed(call: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def _row(case, K, method, passes, products, t_exact, t, exact, approx, stderr, auroc) -> dict:
    diff = approx - exact
    relative = np.abs(diff) / np.abs(exact)
    return {
        "case": case.name,
        "K": K,
        "inputs": len(exact),
        "method": method,
        "products/image": products,
        "products exact/approx": passes / products,
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
    parser.add_argument(
        "--n", type=int, help="inputs per side for every case (default: the case's)"
    )
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    cases = [c for c in CASES if (not args.quick or c.quick)]
    if args.cases:
        cases = [c for c in cases if c.name in args.cases]
    if args.n:
        cases = [replace(c, n=args.n) for c in cases]
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
        command = " ".join(["python benchmarks/approx_bench.py", *(argv or sys.argv[1:])])
        with open(args.markdown, "w", encoding="utf-8") as handle:
            handle.write(f"# Approximate vs exact JEPA-SCORE\n\nMade by `OMP_NUM_THREADS=1 {command}`. "
                         f"{SHARED}\n\n{header}\n\n{table}\n")  # fmt: skip


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
