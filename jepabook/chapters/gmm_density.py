"""Experiments shared by the chapters and by outside checks: train on a mixture, score, compare.

Chapters call these functions; tests call them at small sizes. Every function takes a seed and a device.

The density experiment (`gmm_density`) trains a Gaussian-embedding JEPA on samples of a random
`GaussianMixture` and compares, on the same held-out samples, the true log p with
- JEPA-SCORE(x) = sum_k log sigma_k(J_f(x)) (the paper's estimator),
- the full change-of-variables estimator JEPA-SCORE(x) + log N(f(x); 0, I) (exact when f is a
  bijection pushing p onto N(0, I), K = D),
- the same two for the encoder at its random initialisation (control: training must matter),
- a kernel density estimate with a cross-validated bandwidth (what a user would pick instead),
- the exact Gaussianising map (`flows.RosenblattMap`), the ceiling.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from jepabook import gmm_recipes as gr
from jepabook.data import GaussianMixture
from jepabook.density import change_of_variables
from jepabook.devices import resolve_device
from jepabook.flows import RosenblattMap
from jepabook.gmm_recipes import kde_log_density
from jepabook.losses import VectorViews
from jepabook.metrics import bootstrap_correlation, correlation
from jepabook.models import MLP, ResidualEncoder, whitening_of
from jepabook.plots import SCORE_CMAP, figure
from jepabook.train import History, TrainConfig, train_jepa

# --------------------------------------------------------------------------------------------------
# The encoder and its training
# --------------------------------------------------------------------------------------------------


def gmm_training_data(mixture: GaussianMixture, n_train: int, seed: int = 0) -> torch.Tensor:
    """(n_train, D) float32 training samples (seed + 1, disjoint from held-out draws)."""
    return mixture.sample(n_train, seed=seed + 1)


def build_gmm_encoder(
    data: torch.Tensor,
    width: int,
    *,
    architecture: str = "residual",
    hidden: int = 128,
    depth: int = 3,
    gain: float = 0.1,
    seed: int = 0,
) -> nn.Module:
    """The (untrained) encoder D -> width: "residual" (`ResidualEncoder`) or "mlp" (plain `MLP`)."""
    torch.manual_seed(seed)
    if architecture == "residual":
        mean, whitening = whitening_of(data)
        return ResidualEncoder(mean, whitening, width, hidden=hidden, depth=depth, gain=gain)
    if architecture == "mlp":
        return MLP(data.shape[1], width, hidden=hidden, depth=depth)
    raise ValueError(f"architecture: expected 'residual' or 'mlp', got {architecture!r}")


def train_gmm_encoder(
    mixture: GaussianMixture,
    n_train: int,
    *,
    width: int | None = None,
    regulariser: str = "sigreg",
    steps: int = 400,
    hidden: int = 128,
    depth: int = 3,
    noise: float = 0.05,
    lam: float = 0.9,
    batch_size: int = 512,
    n_slices: int = 64,
    lr: float = 2e-3,
    architecture: str = "residual",
    gain: float = 0.1,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> tuple[nn.Module, History]:
    """Train a Gaussian-embedding JEPA encoder (D -> K) on n_train samples of a mixture.

    The recipe (chosen in the chapter "Density from Gaussian embeddings"): a whitening + residual-MLP
    encoder started near the whitening map, K = D, views with Gaussian noise 0.05, loss
    0.1 * prediction + 0.9 * SIGReg (64 slices), AdamW lr 2e-3 with warm-up and cosine decay,
    batch 512.

    Args:
        mixture: the data law (D = mixture.dim).
        n_train: training-set size (samples drawn with seed + 1).
        width: embedding width K (default D).
        regulariser: "sigreg", "moments" or "none".
        steps, hidden, depth, noise, lam, batch_size, n_slices, lr: the recipe (see TrainConfig, MLP,
            VectorViews).
        architecture, gain: see `build_gmm_encoder`.

    Returns:
        (encoder in eval mode on `device`, training history).
    """
    device = resolve_device(device)
    width = width or mixture.dim
    data = gmm_training_data(mixture, n_train, seed)
    encoder = build_gmm_encoder(
        data, width, architecture=architecture, hidden=hidden, depth=depth, gain=gain, seed=seed
    )
    predictor = MLP(width, width, hidden=max(32, width), depth=1)
    held_out = mixture.sample(min(2000, n_train), seed=seed + 2)
    config = TrainConfig(
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        lam=lam,
        regulariser=regulariser,
        n_slices=n_slices,
        eval_every=max(1, steps // 10),
        seed=seed,
        device=str(device),
        progress=progress,
    )
    history = train_jepa(encoder, predictor, VectorViews(noise), data, config, held_out=held_out)
    return encoder.eval(), history


# --------------------------------------------------------------------------------------------------
# Estimators of log p on held-out samples
# --------------------------------------------------------------------------------------------------


def density_estimates(encoder: nn.Module, x: torch.Tensor) -> dict[str, np.ndarray]:
    """JEPA-SCORE, log N(f(x); 0, I_K) and their sum (the full estimator) at x (n, D), computed in
    float64 on a float64 copy of the encoder (the encoder itself is left as it is).

    Returns:
        {"jepa_score": (n,), "log_normal": (n,), "full": (n,)} numpy arrays.
    """
    parameter = next(encoder.parameters(), None)
    device = parameter.device if parameter is not None else x.device
    model = copy.deepcopy(encoder).double() if parameter is not None else encoder
    parts = change_of_variables(model, x.to(device=device, dtype=torch.float64))
    return {name: value.cpu().numpy() for name, value in parts.items()}


def fold_fraction(encoder: nn.Module, x: torch.Tensor) -> float:
    """For K = D: the fraction of samples x (n, D) where det J_f has the minority sign.

    A smooth map whose Jacobian determinant takes both signs on a connected support folds (it is
    not injective there), and the change of variables then fails. NaN when K != D.
    """
    parameter = next(encoder.parameters())
    x = x.to(device=parameter.device, dtype=parameter.dtype)
    jacobians = torch.func.vmap(torch.func.jacrev(lambda v: encoder(v[None])[0]))(x)
    if jacobians.shape[1] != jacobians.shape[2]:
        return math.nan
    negative = float((torch.linalg.det(jacobians.double()) < 0).double().mean())
    return min(negative, 1 - negative)


# --------------------------------------------------------------------------------------------------
# The experiment
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """Sizes of `gmm_density` at one scale."""

    steps: int
    n_eval: int
    n_boot: int


RECIPES = {
    "ci": Recipe(steps=150, n_eval=1000, n_boot=200),
    "default": Recipe(steps=400, n_eval=2000, n_boot=400),
    "full": Recipe(steps=2000, n_eval=5000, n_boot=1000),
}


def held_out_samples(mixture: GaussianMixture, scale: str, seed: int = 0) -> torch.Tensor:
    """(n_eval, D) float32 held-out samples that `gmm_density` scores at `scale` (never trained on)."""
    return mixture.sample(RECIPES[scale].n_eval, seed=seed + 1000)


def gmm_density(
    dim: int,
    n_train: int,
    *,
    n_components: int = 5,
    seed: int = 0,
    scale: str = "default",
    device: str | torch.device | None = None,
    width: int | None = None,
    regulariser: str = "sigreg",
    kde: bool = True,
    controls: bool = True,
    exact: bool = True,
    keep_values: bool = False,
    steps: int | None = None,
    **recipe,
) -> dict:
    """Train on `GaussianMixture.random(dim, n_components, seed)` and score held-out samples.

    Args:
        dim: D.
        n_train: training-set size.
        scale: "ci", "default" or "full" (training steps, held-out size, bootstrap resamples:
            `RECIPES`).
        width: K (default D).
        regulariser: "sigreg" or "moments" (or "none").
        kde, controls, exact: also compute the KDE baseline, the random-init control, the exact map.
        keep_values: also return the per-sample arrays under "values" ({"log_p": (n_eval,), and one
            (n_eval,) array per estimator: "jepa_score", "full", "random_full", "kde", ...}).
        steps: override the scale's training steps; **recipe: more `train_gmm_encoder` arguments.

    Returns:
        A flat dict. Correlations with the true log p on the same `n_eval` held-out samples:
        "pearson", "spearman" (JEPA-SCORE), "full_pearson", "full_spearman" (JEPA-SCORE + log N(f(x))),
        "random_pearson", "random_full_pearson" (untrained encoder), "kde_pearson", "kde_spearman",
        "exact_pearson" (JEPA-SCORE of the exact map), "exact_full_pearson"; each Pearson with
        "<name>_ci" = (low, high) 95% bootstrap interval, plus "full_minus_random_ci" and
        "pearson_minus_random_ci" (paired intervals of the differences). Also "held_out_sigreg",
        "fold_fraction", "kde_bandwidth", "log_p_var", "seconds", and the settings.
    """
    if scale not in RECIPES:
        raise ValueError(f"scale: expected one of {sorted(RECIPES)}, got {scale!r}")
    sizes = RECIPES[scale]
    device = resolve_device(device)
    mixture = GaussianMixture.random(dim, n_components, seed)
    width = width or dim
    start = time.perf_counter()
    encoder, history = train_gmm_encoder(
        mixture,
        n_train,
        width=width,
        regulariser=regulariser,
        steps=steps or sizes.steps,
        seed=seed,
        device=device,
        **recipe,
    )
    train_seconds = time.perf_counter() - start
    x = held_out_samples(mixture, scale, seed)
    log_p = mixture.log_prob(x.double()).numpy()
    trained = density_estimates(encoder, x)
    estimates = {"": trained["jepa_score"], "full_": trained["full"]}
    if controls:
        architecture = {k: v for k, v in recipe.items() if k in ("architecture", "hidden", "depth")}
        untrained = build_gmm_encoder(
            gmm_training_data(mixture, n_train, seed), width, seed=seed, **architecture
        ).to(device)
        random = density_estimates(untrained, x)
        estimates |= {"random_": random["jepa_score"], "random_full_": random["full"]}
    if exact:
        ideal = density_estimates(RosenblattMap(mixture), x)
        estimates |= {"exact_": ideal["jepa_score"], "exact_full_": ideal["full"]}
    result: dict = {
        "dim": dim,
        "n_train": n_train,
        "width": width,
        "regulariser": regulariser,
        "scale": scale,
        "held_out_sigreg": history.held_out_sigreg[-1],
        "fold_fraction": fold_fraction(encoder, x[:500]),
        "log_p_var": float(log_p.var()),
        "train_seconds": train_seconds,
    }
    if kde:
        kde_log_p, result["kde_bandwidth"] = kde_log_density(
            gmm_training_data(mixture, n_train, seed), x
        )
        estimates["kde_"] = kde_log_p
    for prefix, values in estimates.items():
        interval = bootstrap_correlation(values, log_p, n_boot=sizes.n_boot, seed=seed)
        result[f"{prefix}pearson"] = interval.estimate
        result[f"{prefix}pearson_ci"] = (interval.low, interval.high)
        result[f"{prefix}spearman"] = float(correlation(values, log_p, "spearman"))
    if controls:
        for prefix, name in (("", "pearson_minus_random_ci"), ("full_", "full_minus_random_ci")):
            gap = bootstrap_correlation(
                estimates[prefix],
                log_p,
                n_boot=sizes.n_boot,
                seed=seed,
                baseline=estimates[f"random_{prefix}"],
            )
            result[name] = (gap.low, gap.high)
    if keep_values:
        names = {"": "jepa_score", "full_": "full"}
        result["values"] = {"log_p": log_p} | {
            names.get(prefix, prefix.rstrip("_")): values for prefix, values in estimates.items()
        }
    result["seconds"] = time.perf_counter() - start
    return result


def density_grid(
    dims: list[int],
    sizes: list[int],
    *,
    seed: int = 0,
    scale: str = "default",
    device: str | torch.device | None = None,
    progress: bool = True,
    **options,
):
    """`gmm_density` for every (D, n_train): a pandas DataFrame with one row per cell."""
    import pandas as pd
    from tqdm.auto import tqdm

    cells = [(d, n) for d in dims for n in sizes]
    rows = [
        gmm_density(d, n, seed=seed, scale=scale, device=device, **options)
        for d, n in tqdm(cells, disable=not progress, desc="grid", leave=False)
    ]
    return pd.DataFrame(rows)


def ablation(
    dim: int,
    n_train: int,
    variants: dict[str, dict],
    *,
    seed: int = 0,
    scale: str = "default",
    device: str | torch.device | None = None,
):
    """`gmm_density` for each named variant (keyword overrides, e.g. {"K = D/2": {"width": 2}}),
    without the KDE and exact-map columns: a pandas DataFrame indexed by variant name."""
    import pandas as pd

    rows = {
        name: gmm_density(
            dim, n_train, seed=seed, scale=scale, device=device, kde=False, exact=False, **options
        )
        for name, options in variants.items()
    }
    return pd.DataFrame(rows).T


def pivot(grid, column: str):
    """The (D x n_train) table of one column of a `density_grid` frame."""
    return grid.pivot(index="dim", columns="n_train", values=column)


def correlation_heatmap(ax, grid, column: str, title: str, *, vmin: float = -0.2):
    """Draw the (D x n_train) table of `column` on ax, each cell annotated with its value."""

    table = pivot(grid, column)
    image = ax.imshow(table.values, cmap=SCORE_CMAP, vmin=vmin, vmax=1.0, aspect="auto")
    for (i, j), value in np.ndenumerate(table.values):
        colour = "black" if value > 0.55 else "white"
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", color=colour, fontsize=9)
    ax.set_xticks(range(table.shape[1]), [f"{n:,}" for n in table.columns])
    ax.set_yticks(range(table.shape[0]), [str(d) for d in table.index])
    ax.set_xlabel("training samples n")
    ax.set_ylabel("input dimension D")
    ax.set_title(title)
    ax.grid(False)
    return image


def check(full: np.ndarray, log_p: np.ndarray, floor: float = 0.4) -> float:
    """The chapter's headline, asserted at every scale: the full estimator JEPA-SCORE + log N(f(x))
    (n,) correlates with the true log p (n,) above `floor` (Pearson); returns the correlation. A
    flipped, shuffled or constant estimate fails it (tests/test_verdicts_sabotage.py)."""
    r = correlation(full, log_p)
    assert r > floor, f"Pearson of the full estimator with log p: {r:.3f}, not above {floor}"
    return r


# --------------------------------------------------------------------------------------------------
# The recipe sweep (benchmarks/gmm_sweep.py) and the ceilings on the same held-out points
# --------------------------------------------------------------------------------------------------

SWEEP_CSV = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "gmm_sweep.csv"
SWEEP_COMMAND = "OMP_NUM_THREADS=1 python benchmarks/gmm_sweep.py"


def load_sweep(path: str | Path = SWEEP_CSV) -> dict:
    """The shipped sweep: {"table": one row per run, "effects": `gmm_recipes.main_effects`,
    "references": `gmm_recipes.reference_table` of the base recipe, "unseen": the runs of the best
    recipe on mixtures not used for tuning, "probe": `gmm_recipes.sigreg_from_likelihood_fit` rows
    (None when the sweep wrote none)}, pandas DataFrames."""
    import pandas as pd

    table = pd.read_csv(path)
    probe = Path(path).with_name(Path(path).stem + "_probe.csv")
    return {
        "probe": pd.read_csv(probe) if probe.exists() else None,
        "table": table,
        "effects": gr.main_effects(table),
        "references": gr.reference_table(table),
        "unseen": table[table.phase == "unseen"].reset_index(drop=True),
    }


def sweep_figure(table):
    """One panel per D: for each variant of a sweep table (one row per run), the paired difference
    of its full Pearson with the base recipe's on the same mixture, one small dot per seed, and
    their mean (large dot)."""
    tuning = table[table.phase.isin(["main", "combo"])]
    base = tuning[tuning.variant == "base"].set_index(["dim", "seed"]).full_pearson
    dims = sorted(tuning.dim.unique())
    variants = list(dict.fromkeys(tuning.variant[tuning.variant != "base"]))
    fig, axes = figure(len(dims), 1, width=4.2, height=0.3 * len(variants) + 1.4, sharey=True)
    axes = np.atleast_1d(axes)
    for ax, dim in zip(axes, dims, strict=True):
        for i, variant in enumerate(variants):
            runs = tuning[(tuning.variant == variant) & (tuning.dim == dim)]
            diffs = (runs.set_index(["dim", "seed"]).full_pearson - base).dropna()
            if len(diffs):
                ax.scatter(diffs, np.full(len(diffs), i), s=12, color="C0", alpha=0.6)
                ax.scatter(diffs.mean(), i, s=45, color="C1", zorder=3)
        ax.axvline(0, color="black", lw=0.8)
        ax.set_yticks(range(len(variants)), variants)
        ax.set(xlabel="full Pearson minus base recipe's", title=f"D = {dim}")
    return fig, axes


def ceilings(
    dim: int,
    n_train: int,
    *,
    recipe: gr.GmmRecipe,
    seed: int = 0,
    n_eval: int = 2000,
    ml_steps: int = 2000,
) -> dict:
    """`gmm_recipes.score_recipe` with its references: the recipe's full estimator, the KDE, the
    same coupling architecture trained by maximum likelihood, and the base-corrected estimator,
    on one mixture's held-out points (the same points for all)."""
    return gr.score_recipe(
        recipe, dim, n_train=n_train, seed=seed, n_eval=n_eval, references=True,
        ml_steps=ml_steps, n_trace=8,
    )  # fmt: skip


def chapter_recipe(**changes) -> gr.GmmRecipe:
    """The chapter's recipe (`train_gmm_encoder`'s defaults) as a `gmm_recipes.GmmRecipe`, with
    `changes` (e.g. steps=...)."""
    return gr.BASE.but(**changes)
