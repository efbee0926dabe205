"""The recipe sweep of the Gaussian-mixture density experiment (issue 16).

Main effects one factor at a time around the book's recipe (`gmm_recipes.BASE`), several seeds per
cell, on `GaussianMixture.random(D, 5, seed)` with n_train training samples; then the combination of
each factor's best level, then the best recipe on mixtures not used for tuning. Every recipe trains
with the Gaussian-embedding loss only (no likelihood term). The rows named "base" also carry the
references on the same data and held-out points: the cross-validated KDE, the same coupling
architecture trained by maximum likelihood, and the base-corrected estimator (a different estimator).

Rows are appended to the CSV as they finish (a rerun skips the rows already there), and the
markdown report is rewritten after each phase:

    OMP_NUM_THREADS=1 python benchmarks/gmm_sweep.py --quick   # minutes: a smoke run
    OMP_NUM_THREADS=1 python benchmarks/gmm_sweep.py           # the first pass (about an hour)
    OMP_NUM_THREADS=1 python benchmarks/gmm_sweep.py --full    # D in {2, 4, 8, 16}, 5 seeds, 4x steps
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from jepabook import gmm_recipes as gr

RESULTS = Path(__file__).parent / "results"

# factor -> {level name: recipe changes}; the base recipe is every factor's reference level
FACTORS: dict[str, dict[str, dict]] = {
    "steps": {"steps x4": {"steps": 4}},  # a multiplier of the pass's steps
    "learning rate": {
        "lr 5e-4, steps x4": {"lr": 5e-4, "steps": 4},
        "lr 2e-4, steps x4": {"lr": 2e-4, "steps": 4},
    },
    "encoder": {"coupling flow": {"encoder": "coupling"}},
    "lambda": {"lam 1.0 (pure SIGReg)": {"lam": 1.0}, "lam 0.05": {"lam": 0.05}},
    "t grid": {
        "t_max 5, 41 points": {"t_max": 5.0, "n_points": 41},
        "weight width 2, t_max 6": {"weight_width": 2.0, "t_max": 6.0, "n_points": 41},
    },
    "slices": {"256 slices": {"n_slices": 256}, "1024 slices": {"n_slices": 1024}},
    "noise": {"no view noise": {"noise": 0.0}},
    "batch": {"batch 2048": {"batch_size": 2048}},
}
SLOW = {"1024 slices", "batch 2048"}  # one seed in the first pass, left out of the combination
UNSEEN = [(3, 6, 11), (5, 4, 12), (8, 8, 13)]  # (D, components, seed): never used for tuning


def passes(name: str) -> dict:
    """Sizes of a pass: dims, seeds, steps, training size, held-out size, ML-flow steps."""
    return {
        "quick": {"dims": [2], "seeds": [0], "steps": 60, "n_train": 4000, "n_eval": 500,
                  "ml_steps": 100, "slow_seeds": 1},
        "first": {"dims": [2, 8], "seeds": [0, 1], "steps": 400, "n_train": 16_000,
                  "n_eval": 2000, "ml_steps": 2000, "slow_seeds": 1},
        "full": {"dims": [2, 4, 8, 16], "seeds": [0, 1, 2, 3, 4], "steps": 1600,
                 "n_train": 16_000, "n_eval": 5000, "ml_steps": 6000, "slow_seeds": 5},
    }[name]  # fmt: skip


def recipe_of(changes: dict, steps: int) -> gr.GmmRecipe:
    """The base recipe with `changes`; "steps" in changes multiplies the pass's steps."""
    changes = dict(changes)
    factor = changes.pop("steps", 1)
    return gr.BASE.but(steps=steps * factor, **changes)


def run_rows(jobs, csv: Path, sizes: dict) -> pd.DataFrame:
    """Run (phase, factor, variant, changes, dim, components, seed, references) jobs not yet in the
    CSV, appending each row when it finishes; returns the whole CSV."""
    done = set()
    if csv.exists():
        old = pd.read_csv(csv)
        done = set(zip(old.variant, old.dim, old.n_components, old.seed, strict=True))
    for phase, factor, variant, changes, dim, components, seed, references in jobs:
        if (variant, dim, components, seed) in done:
            continue
        start = time.perf_counter()
        row = gr.score_recipe(
            recipe_of(changes, sizes["steps"]), dim, n_train=sizes["n_train"],
            n_components=components, seed=seed, n_eval=sizes["n_eval"],
            n_trace=8 if factor == "steps" or variant == "base" else 0,
            references=references, ml_steps=sizes["ml_steps"],
        )  # fmt: skip
        row = {"phase": phase, "factor": factor, "variant": variant, **row}
        for key in [k for k in row if k.startswith("trace_")]:
            row[key] = json.dumps([round(v, 4) for v in row[key]])
        row["wall_seconds"] = time.perf_counter() - start
        frame = pd.DataFrame([row])
        if csv.exists():  # rewrite: rows with references or traces carry more columns
            frame = pd.concat([pd.read_csv(csv), frame], ignore_index=True)
        frame.to_csv(csv, index=False)
        done.add((variant, dim, components, seed))
        print(f"{variant:24s} D={dim} C={components} seed={seed}: full {row['full_pearson']:.3f}"
              f" ({row['wall_seconds']:.0f} s)", flush=True)  # fmt: skip
    return pd.read_csv(csv)


def best_variant(effects: pd.DataFrame) -> str:
    """The variant with the highest full Pearson averaged over D."""
    return str(effects.groupby("variant")["full Pearson"].mean().idxmax())


def combination(effects: pd.DataFrame) -> dict:
    """The changes of every factor's best level, where that level beats the base on average."""
    changes: dict = {}
    mean = effects.groupby(["factor", "variant"])["minus base"].mean()
    for factor, levels in FACTORS.items():
        if factor not in mean.index.get_level_values(0):
            continue
        cheap = mean.loc[factor].drop(list(SLOW), errors="ignore")
        if cheap.empty:
            continue
        level = cheap.idxmax()
        if cheap[level] > 0.005 and level in levels:
            changes |= levels[level]
    return changes


def report(table: pd.DataFrame, path: Path, command: str, probe_csv: Path) -> None:
    """Write the markdown report: main effects, references, unseen mixtures, and the probe
    (SIGReg training started from the maximum-likelihood fit)."""
    effects = gr.main_effects(table)
    lines = [f"# Gaussian-mixture recipe sweep\n\nProduced by `{command}` "
             f"({pd.Timestamp.now(tz='UTC'):%Y-%m-%d %H:%M} UTC, {len(table)} runs). "
             "Full estimator = JEPA-SCORE + log N(f(x)); Pearson with the true log p on held-out "
             "samples; intervals are 95% t-intervals over seeds; 'minus base' is paired by seed.\n",
             "## Main effects (one factor at a time around the base recipe)\n",
             effects.round(3).to_markdown(index=False), ""]  # fmt: skip
    refs = table[table.variant == "base"].groupby("dim")[
        ["full_pearson", "kde_pearson", "ml_flow_pearson", "base_corrected_pearson"]
    ]
    lines += ["## References on the same data and held-out points (mean over seeds)\n",
              "`base_corrected` = log p_Z(f(x)) + log|det J| with p_Z a KDE of the training "
              "embeddings: a different estimator.\n",
              refs.mean().round(3).to_markdown(), ""]  # fmt: skip
    unseen = table[table.phase == "unseen"]
    if len(unseen):
        cols = ["variant", "dim", "n_components", "seed", "full_pearson", "kde_pearson",
                "ml_flow_pearson", "base_corrected_pearson"]  # fmt: skip
        lines += ["## Best recipe on mixtures not used for tuning\n",
                  unseen[cols].round(3).to_markdown(index=False), ""]  # fmt: skip
    if probe_csv.exists():
        lines += ["## Is the likelihood fit a minimum of the Gaussian-embedding loss?\n",
                  "The coupling flow fitted by maximum likelihood, then trained further with pure SIGReg "
                  "(lam = 1, the pass's steps) at two learning rates; seed 0, same held-out points.\n",
                  pd.read_csv(probe_csv).round({"held_out_sigreg": 3, "full_pearson": 3})
                  .to_markdown(index=False), ""]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="a smoke run (minutes)")
    group.add_argument("--full", action="store_true", help="the big sweep (many hours)")
    parser.add_argument(
        "--report-only", action="store_true", help="rewrite the report from the CSV"
    )
    args = parser.parse_args(argv)
    name = "quick" if args.quick else "full" if args.full else "first"
    sizes = passes(name)
    torch.set_num_threads(1)
    RESULTS.mkdir(exist_ok=True)
    stem = "gmm_sweep" if name == "first" else f"gmm_sweep_{name}"
    csv, md = RESULTS / f"{stem}.csv", RESULTS / f"{stem}.md"
    command = "OMP_NUM_THREADS=1 python benchmarks/gmm_sweep.py" + (
        f" --{name}" if name != "first" else ""
    )
    probe_csv = RESULTS / f"{stem}_probe.csv"
    if args.report_only:
        report(pd.read_csv(csv), md, command, probe_csv)
        return
    jobs = [
        ("main", "base", "base", {}, d, 5, s, True) for s in sizes["seeds"] for d in sizes["dims"]
    ]
    slow_jobs = []
    for factor, levels in FACTORS.items():
        for variant, changes in levels.items():
            if variant in SLOW:  # last, fewer seeds (and only the first D in the first pass)
                dims = sizes["dims"][:1] if name == "first" else sizes["dims"]
                slow_jobs += [("main", factor, variant, changes, d, 5, s, False)
                              for s in sizes["seeds"][: sizes["slow_seeds"]] for d in dims]  # fmt: skip
            else:
                jobs += [("main", factor, variant, changes, d, 5, s, False)
                         for s in sizes["seeds"] for d in sizes["dims"]]  # fmt: skip
    jobs += slow_jobs
    table = run_rows(jobs, csv, sizes)
    report(table, md, command, probe_csv)
    changes = combination(gr.main_effects(table))
    single = [lv for levels in FACTORS.values() for lv in levels.values() if lv == changes]
    if changes and not single:  # a combination that is one measured level adds nothing
        jobs = [("combo", "combination", "combination", changes, d, 5, s, False)
                for s in sizes["seeds"] for d in sizes["dims"]]  # fmt: skip
        table = run_rows(jobs, csv, sizes)
        report(table, md, command, probe_csv)
    best = best_variant(gr.main_effects(table))
    best_changes = (
        changes
        if best == "combination"
        else next((lv[best] for lv in FACTORS.values() if best in lv), {})
    )
    print(f"best recipe: {best} {best_changes}", flush=True)
    unseen = UNSEEN[:1] if name == "quick" else UNSEEN
    jobs = [
        ("unseen", "unseen", f"best: {best}", best_changes, d, c, s, True) for d, c, s in unseen
    ]
    table = run_rows(jobs, csv, sizes)
    if not probe_csv.exists():
        rows = [row for d in sizes["dims"] for row in gr.sigreg_from_likelihood_fit(
            d, n_train=sizes["n_train"], n_eval=sizes["n_eval"], ml_steps=sizes["ml_steps"],
            steps=sizes["steps"])]  # fmt: skip
        pd.DataFrame(rows).to_csv(probe_csv, index=False)
    report(table, md, command, probe_csv)


if __name__ == "__main__":
    sys.exit(main())
