"""Helpers of the chapter "Computing JEPA-SCORE at scale": timings and the approximation's sweep.

- `listing_source()`: the paper's listing as the book keeps it (`reference_jepa_score`).
- `time_exact(encoder, x)`: wall time of the listing, of `jepa_score` and of the floor (the K
  vector-Jacobian products alone), measured in one process on the same images.
- `sweep(encoder, inside, outside, settings)`: the approximation against the exact score over a
  list of (probes, steps): products, wall time, rank correlation, errors, outlier AUROC.
- `frontier_figure(frame)`: Spearman and error against the products, one figure.
- `bench_table(path)`: the benchmark's Markdown table (benchmarks/approx_bench.py) as a DataFrame.
- `bench_summary(bench)`: per case, the approximation's best rank correlation, the best one among
  the settings that save at least `TARGET_SAVING` times the products, and how many settings meet
  the whole target (`meets_target`).
- `bench_frontier_figure(bench)`: the benchmark's frontier, Spearman and error against wall time.
- `bench_value(bench, case, method, column)`: one number of the benchmark table.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from jepabook.jacobian import jacobian_blocks
from jepabook.score import (
    eval_mode,
    frozen_parameters,
    jepa_score,
    jepa_score_with_error,
    reference_jepa_score,
)

BENCH_RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
TARGET_SAVING = 10  # issue 18: at least 10 times fewer products than the exact score


def listing_source() -> str:
    """The source of `reference_jepa_score` (the paper's Appendix B listing)."""
    return inspect.getsource(reference_jepa_score)


def _timed(call: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def floor_seconds(encoder: Callable, x: torch.Tensor, K: int) -> float:
    """Seconds of the K plain backward passes over the batch x (B, ...), nothing stored."""
    with eval_mode(encoder), frozen_parameters(encoder), torch.enable_grad():
        start = time.perf_counter()
        for _ in jacobian_blocks(encoder, x, K, block=1, forward=False):
            pass
        return time.perf_counter() - start


def time_exact(encoder: Callable, x: torch.Tensor) -> pd.DataFrame:
    """Wall time (s) of the listing, of `jepa_score` and of the floor on x (B, ...), and the
    largest difference of the two scores; one row per method, ratios to the floor."""
    with torch.no_grad():
        K = encoder(x[:1]).shape[1]
    jepa_score(encoder, x[:2])  # warm-up
    t_listing, listing = _timed(lambda: reference_jepa_score(encoder, x))
    t_engine, engine = _timed(lambda: jepa_score(encoder, x))
    t_floor = floor_seconds(encoder, x, K)
    difference = float((listing.double() - engine).abs().max())
    return pd.DataFrame(
        {
            "seconds": [t_listing, t_engine, t_floor],
            "x floor": [t_listing / t_floor, t_engine / t_floor, 1.0],
            "max |score difference|": [difference, difference, np.nan],
        },
        index=["listing (Appendix B)", "jepa_score (engine)", "floor: K backward passes"],
    )


def sweep(
    encoder: Callable,
    inside: torch.Tensor,
    outside: torch.Tensor,
    settings: list[tuple[int, int]],
    seed: int = 0,
) -> tuple[pd.DataFrame, np.ndarray, dict]:
    """The approximation against the exact score on inside (n, ...) and outside (m, ...) images.

    Returns:
        a frame with one row per (probes, steps): products per image (exact K, approx
        2 (b s + 1)), wall time ratio exact / approx, Spearman over all images, median relative
        error, bias and spread of approx - exact, mean reported stderr, AUROC difference
        (approx - exact, outliers = low score); the exact scores (n + m,); and the approximate
        scores per setting {(b, s): (n + m,)}.
    """
    x = torch.cat([inside, outside])
    labels = np.r_[np.zeros(len(inside)), np.ones(len(outside))]
    with torch.no_grad():
        K = encoder(x[:1]).shape[1]
    jepa_score(encoder, x[:2])  # warm-up
    t_exact, exact = _timed(lambda: jepa_score(encoder, x).numpy())
    auroc_exact = roc_auc_score(labels, -exact)
    rows, scores = [], {}
    for b, s in settings:
        t, (approx, stderr) = _timed(
            lambda b=b, s=s: jepa_score_with_error(encoder, x, probes=b, steps=s, seed=seed)
        )
        approx, diff = approx.numpy(), approx.numpy() - exact
        scores[(b, s)] = approx
        rows.append(
            {
                "probes b": b,
                "steps s": s,
                "products/image": 2 * (b * s + 1),
                "exact products / approx": K / (2 * (b * s + 1)),
                "wall exact / approx": t_exact / t,
                "Spearman": spearmanr(approx, exact)[0],
                "median rel. error": float(np.median(np.abs(diff) / np.abs(exact))),
                "bias": float(diff.mean()),
                "sd(approx - exact)": float(diff.std()),
                "mean stderr": float(stderr.mean()),
                "AUROC approx - exact": roc_auc_score(labels, -approx) - auroc_exact,
            }
        )
    frame = pd.DataFrame(rows)
    frame.attrs.update(K=K, auroc_exact=auroc_exact, sd_exact=float(exact.std()))
    return frame, exact, scores


def frontier_figure(frame: pd.DataFrame) -> plt.Figure:
    """Left: Spearman against products per image; right: bias and spread of approx - exact."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.2))
    products = frame["products/image"]
    left.plot(products, frame["Spearman"], "o-")
    left.axhline(0.99, color="grey", ls="--", lw=1, label="target 0.99")
    left.axvline(frame.attrs["K"], color="black", ls=":", lw=1, label="exact: K products")
    left.set(xlabel="Jacobian products per image", ylabel="Spearman with the exact score")
    left.legend(fontsize=8)
    right.plot(products, frame["bias"], "o-", label="bias (mean of approx - exact)")
    right.plot(products, frame["sd(approx - exact)"], "s-", label="spread (sd of approx - exact)")
    right.axhline(frame.attrs["sd_exact"], color="grey", ls="--", lw=1, label="sd of exact scores")
    right.axvline(frame.attrs["K"], color="black", ls=":", lw=1)
    right.set(xlabel="Jacobian products per image", ylabel="score units")
    right.legend(fontsize=8)
    fig.tight_layout()
    return fig


def bench_table(path: Path = BENCH_RESULTS / "approx_bench_cpu.md") -> tuple[str, pd.DataFrame]:
    """(the header lines, the table) of a benchmark results file; an empty frame when absent."""
    if not path.exists():
        return "", pd.DataFrame()
    lines = path.read_text(encoding="utf-8").splitlines()
    table = [line for line in lines if line.startswith("|")]
    header = " ".join(line for line in lines if line and not line.startswith(("|", "#")))
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table]
    frame = pd.DataFrame(cells[2:], columns=cells[0]) if len(cells) > 2 else pd.DataFrame()
    return header, frame


NUMERIC = ["K", "inputs", "products/image", "products exact/approx", "wall s", "wall exact/approx",
           "Spearman", "median rel. err", "max rel. err", "bias", "sd(approx-exact)", "sd(exact)",
           "mean stderr", "AUROC (exact) or diff"]  # fmt: skip


def _approx_rows(bench: pd.DataFrame) -> pd.DataFrame:
    """The approximation's rows of the benchmark table, numeric columns as floats."""
    rows = bench[bench["method"].str.startswith("approx")].copy()
    rows[NUMERIC] = rows[NUMERIC].astype(float)
    return rows


def bench_summary(bench: pd.DataFrame, saving: float = TARGET_SAVING) -> pd.DataFrame:
    """Per case of the benchmark table (K, inputs): the best Spearman of any setting, and the
    best Spearman, its wall-time ratio and AUROC difference among the settings that need at most
    1/saving of the exact method's products (NaN when none does), and the number of settings
    that meet the whole target (`meets_target`)."""
    rows = []
    for case, group in _approx_rows(bench).groupby("case", sort=False):
        cheap = group[group["products exact/approx"] >= saving]
        best = cheap.loc[cheap["Spearman"].idxmax()] if len(cheap) else None
        rows.append(
            {
                "case": case,
                "K": int(group["K"].iloc[0]),
                "inputs": int(group["inputs"].iloc[0]),
                "best Spearman (any setting)": group["Spearman"].max(),
                f"best Spearman at >= {saving:g}x fewer products": np.nan
                if best is None
                else best["Spearman"],
                "its wall exact/approx": np.nan if best is None else best["wall exact/approx"],
                "its AUROC diff": np.nan if best is None else best["AUROC (exact) or diff"],
                "settings meeting the target": int(meets_target(group).sum()),
            }
        )
    return pd.DataFrame(rows).set_index("case")


def meets_target(rows: pd.DataFrame, saving: float = TARGET_SAVING) -> pd.Series:
    """(n,) bool per approximation row: the whole target of issue 18, i.e. at least `saving` times
    fewer products, 5 times less wall time, Spearman >= 0.99 and an AUROC within 0.005."""
    return (
        (rows["products exact/approx"] >= saving)
        & (rows["wall exact/approx"] >= 5)
        & (rows["Spearman"] >= 0.99)
        & (rows["AUROC (exact) or diff"].abs() <= 0.005)
    )


def bench_frontier_figure(bench: pd.DataFrame) -> plt.Figure:
    """Left: Spearman with the exact score against the wall-time ratio exact / approx, one point
    per setting, one colour per case; right: the spread of the error approx - exact relative to the spread of the exact
    scores (what decides the ranking) against the same ratio (log scales)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(8.5, 3.4))
    for case, group in _approx_rows(bench).groupby("case", sort=False):
        group = group.sort_values("wall exact/approx")
        label = f"{case} (K = {int(group['K'].iloc[0])})"
        left.plot(group["wall exact/approx"], group["Spearman"], "o", label=label)
        relative = group["sd(approx-exact)"] / group["sd(exact)"]
        right.plot(group["wall exact/approx"], relative, "o", label=label)
    for ax in (left, right):
        ax.set_xscale("log")
        ax.axvline(5, color="grey", ls=":", lw=1)
        ax.set_xlabel("wall time exact / approx")
    left.axhline(0.99, color="grey", ls="--", lw=1)
    left.set_ylabel("Spearman with the exact score")
    right.set_yscale("log")
    right.set_ylabel("sd(approx - exact) / sd(exact)")
    right.legend(fontsize=7)
    fig.tight_layout()
    return fig


def bench_value(bench: pd.DataFrame, case: str, method: str, column: str) -> float:
    """The number in `column` of the benchmark row (case, method); NaN when there is none."""
    row = bench[(bench["case"] == case) & (bench["method"] == method)]
    return float(row[column].iloc[0]) if len(row) else float("nan")
