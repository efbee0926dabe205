"""The recipe space of the Gaussian-mixture density experiment, its two encoder families, and the
references it is measured against (issue 16).

A `GmmRecipe` fixes everything that trains an encoder f: R^D -> R^D with the Gaussian-embedding loss
(1 - lam) * prediction + lam * SIGReg(f(views)) and nothing else (no likelihood term): encoder family
("residual": whitening + residual MLP, `models.ResidualEncoder`; "coupling": whitening + affine
couplings, `flows.CouplingFlow`), SIGReg's slices and Epps-Pulley grid (t_max, points), lambda, view
noise, batch size, steps and learning rate.

`score_recipe` trains one recipe on `GaussianMixture.random(D, C, seed)` and scores held-out samples
with the full estimator JEPA-SCORE + log N(f(x)); beside it, on the same data and held-out points:
- `train_ml_flow`: the same coupling architecture trained by maximum likelihood (the ceiling of the
  architecture, with the objective changed);
- the base-corrected estimator log p_Z(f(x)) + log|det J_f(x)|, p_Z a KDE fitted on the training
  embeddings: a *different estimator*, it does not assume the embeddings are N(0, I).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch import nn

from jepabook.data import GaussianMixture
from jepabook.density import change_of_variables, log_standard_normal
from jepabook.flows import CouplingFlow
from jepabook.losses import (
    _EmpiricalCharacteristicFunction,
    epps_pulley_grid,
    prediction_loss,
    random_directions,
    sigreg,
)
from jepabook.metrics import correlation
from jepabook.models import MLP, ResidualEncoder, whitening_of
from jepabook.train import cosine_schedule


@dataclass(frozen=True)
class GmmRecipe:
    """One point of the recipe space (defaults: the book's recipe before issue 16)."""

    encoder: str = "residual"  # "residual" or "coupling"
    steps: int = 400
    batch_size: int = 512
    lr: float = 2e-3
    lam: float = 0.9  # SIGReg weight; 1.0 = pure SIGReg, no prediction term, no views
    noise: float = 0.05  # view noise (raw data units)
    n_slices: int = 64
    t_max: float = 3.0
    n_points: int = 17
    weight_width: float = 1.0  # Epps-Pulley weight exp(-t^2 / (2 w^2)); 1.0 is SIGReg's own
    hidden: int = 128
    depth: int = 3
    n_layers: int = 8  # coupling layers ("coupling" only)

    def but(self, **changes) -> GmmRecipe:
        """A copy with some fields changed."""
        return replace(self, **changes)


BASE = GmmRecipe()


def build_encoder(recipe: GmmRecipe, data: torch.Tensor, seed: int = 0) -> nn.Module:
    """The untrained encoder of `recipe` for training data (N, D): starts as the whitening map."""
    torch.manual_seed(seed)
    mean, whitening = whitening_of(data)
    if recipe.encoder == "residual":
        return ResidualEncoder(
            mean, whitening, data.shape[1], hidden=recipe.hidden, depth=recipe.depth
        )
    if recipe.encoder == "coupling":
        hidden = min(recipe.hidden, 64)
        return CouplingFlow(mean, whitening, n_layers=recipe.n_layers, hidden=hidden, depth=2)
    raise ValueError(f"encoder: expected 'residual' or 'coupling', got {recipe.encoder!r}")


def log_density(encoder: nn.Module, x: torch.Tensor) -> dict[str, np.ndarray]:
    """JEPA-SCORE (= log|det J_f| for K = D), log N(f(x)) and the full estimator at x (n, D),
    in float64: closed form for a `CouplingFlow`, autograd Jacobians otherwise. Returns (n,) arrays."""
    x = x.double()
    model = _float64_copy(encoder)
    if isinstance(model, CouplingFlow):
        with torch.no_grad():
            z, log_det = model.forward_and_log_det(x)
        parts = {"jepa_score": log_det, "log_normal": log_standard_normal(z)}
        parts["full"] = parts["jepa_score"] + parts["log_normal"]
    else:
        parts = change_of_variables(model, x)
    return {k: v.detach().numpy() for k, v in parts.items()}


def _float64_copy(encoder: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(encoder).cpu().double().eval()


def train_recipe(
    recipe: GmmRecipe,
    data: torch.Tensor,
    *,
    seed: int = 0,
    trace_x: torch.Tensor | None = None,
    trace_log_p: np.ndarray | None = None,
    n_trace: int = 0,
    encoder: nn.Module | None = None,
) -> tuple[nn.Module, dict[str, list[float]]]:
    """Train the encoder of `recipe` on data (N, D) with the Gaussian-embedding loss only.

    With trace_x (M, D), trace_log_p (M,) and n_trace > 0: also records, at n_trace evenly spaced
    steps, the held-out SIGReg (fixed 256 slices) and the full estimator's Pearson with log p.
    With `encoder`: train that module (in place) instead of a fresh one of the recipe's family.

    Returns:
        (encoder in eval mode, {"step": [...], "sigreg": [...], "pearson": [...]}).
    """
    generator = torch.Generator().manual_seed(seed)
    encoder = (encoder if encoder is not None else build_encoder(recipe, data, seed)).train()
    dim = data.shape[1]
    predictor = MLP(dim, dim, hidden=max(32, dim), depth=1) if recipe.lam < 1 else None
    modules = [m for m in (encoder, predictor) if m is not None]
    parameters = [p for m in modules for p in m.parameters()]
    optimiser = torch.optim.AdamW(parameters, lr=recipe.lr, weight_decay=1e-4)
    warmup = min(100, recipe.steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: cosine_schedule(s, recipe.steps, warmup)
    )
    every = max(1, recipe.steps // n_trace) if n_trace else 0
    trace: dict[str, list[float]] = {"step": [], "sigreg": [], "pearson": []}
    batch = min(recipe.batch_size, data.shape[0])
    for step in range(recipe.steps):
        index = torch.randint(0, data.shape[0], (batch,), generator=generator)
        loss = _loss(recipe, encoder, predictor, data[index], generator)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if every and ((step + 1) % every == 0 or step == 0):
            _trace(trace, step + 1, encoder, trace_x, trace_log_p)
    return encoder.eval(), trace


def recipe_sigreg(recipe: GmmRecipe, z: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """SIGReg of embeddings z (N, K) with the recipe's slices and Epps-Pulley grid; with
    weight_width w != 1, the weight exp(-t^2/2) becomes exp(-t^2 / (2 w^2)) (w > 1 weighs high
    frequencies, i.e. fine structure, more). Returns a () scalar."""
    if recipe.weight_width == 1.0:
        return sigreg(z, recipe.n_slices, generator=generator, n_points=recipe.n_points,
                      t_max=recipe.t_max)  # fmt: skip
    directions = random_directions(
        z.shape[1], recipe.n_slices, generator=generator, device=z.device, dtype=z.dtype
    )
    t, weights = epps_pulley_grid(recipe.n_points, recipe.t_max, device=z.device)
    t, weights = t.to(z.dtype), weights.to(z.dtype)
    weights = weights * torch.exp(0.5 * t**2 * (1 - 1 / recipe.weight_width**2))
    real, imaginary = _EmpiricalCharacteristicFunction.apply(z @ directions, t)
    real = real - torch.exp(-0.5 * t**2)
    return z.shape[0] * ((real**2 + imaginary**2) * weights).sum(-1).mean()


def _loss(recipe, encoder, predictor, x, generator) -> torch.Tensor:
    """(1 - lam) * two-view prediction + lam * SIGReg of all views' embeddings."""
    if predictor is None:  # pure SIGReg: the clean samples, no views
        return recipe_sigreg(recipe, encoder(x), generator)
    views = torch.cat([x + recipe.noise * torch.randn(x.shape, generator=generator) for _ in "uv"])
    z = encoder(views).view(2, x.shape[0], -1)
    predicted = predictor(z.flatten(0, 1)).view_as(z)
    prediction = 0.5 * (prediction_loss(predicted[0], z[1]) + prediction_loss(predicted[1], z[0]))
    regulariser = recipe_sigreg(recipe, z.flatten(0, 1), generator)
    return (1 - recipe.lam) * prediction + recipe.lam * regulariser


def _trace(trace, step, encoder, x, log_p) -> None:
    encoder.eval()
    with torch.no_grad():
        z = encoder(x.float())
    g = torch.Generator().manual_seed(0)
    trace["step"].append(step)
    trace["sigreg"].append(float(sigreg(z, 256, generator=g)))
    trace["pearson"].append(float(correlation(log_density(encoder, x)["full"], log_p)))
    encoder.train()


def train_ml_flow(
    data: torch.Tensor,
    *,
    steps: int = 2000,
    batch_size: int = 512,
    lr: float = 2e-3,
    n_layers: int = 8,
    hidden: int = 64,
    seed: int = 0,
) -> CouplingFlow:
    """The ceiling of the coupling architecture: the same `CouplingFlow` trained by maximum
    likelihood, minimising -mean(log N(f(x)) + log|det J_f(x)|) over data (N, D)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    mean, whitening = whitening_of(data)
    flow = CouplingFlow(mean, whitening, n_layers=n_layers, hidden=hidden).train()
    optimiser = torch.optim.AdamW(flow.parameters(), lr=lr, weight_decay=1e-4)
    warmup = min(100, steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser, lambda s: cosine_schedule(s, steps, warmup)
    )
    for _ in range(steps):
        index = torch.randint(
            0, data.shape[0], (min(batch_size, data.shape[0]),), generator=generator
        )
        z, log_det = flow.forward_and_log_det(data[index])
        loss = -(log_standard_normal(z) + log_det).mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
    return flow.eval()


def kde_log_density(
    train: torch.Tensor,
    x: torch.Tensor,
    *,
    n_bandwidths: int = 12,
    max_search: int = 3000,
    folds: int = 3,
) -> tuple[np.ndarray, float]:
    """Gaussian kernel density estimate of the training data, evaluated at x (n, D).

    scikit-learn `KernelDensity` on whitened data; the bandwidth is chosen by `GridSearchCV`
    (held-out log-likelihood, `folds`-fold) over a log-spaced grid around Scott's rule, on at most
    `max_search` training points, then the estimate is refit on all of them. Whitening is affine,
    so the log-density is shifted by a constant, which no correlation sees.

    Returns:
        (log-density (n,) up to a constant, chosen bandwidth in whitened units).
    """
    from sklearn.model_selection import GridSearchCV
    from sklearn.neighbors import KernelDensity

    mean, whitening = whitening_of(train)
    train_w = ((train.double() - mean) @ whitening.T).numpy()
    x_w = ((x.double().cpu() - mean) @ whitening.T).numpy()
    n, dim = train_w.shape
    scott = n ** (-1.0 / (dim + 4))
    grid = {"bandwidth": scott * np.geomspace(0.1, 2.0, n_bandwidths)}
    search = GridSearchCV(KernelDensity(), grid, cv=folds).fit(train_w[:max_search])
    bandwidth = float(search.best_params_["bandwidth"])
    kde = KernelDensity(bandwidth=bandwidth).fit(train_w)
    return kde.score_samples(x_w), bandwidth


def base_corrected(
    encoder: nn.Module, train: torch.Tensor, x: torch.Tensor, max_fit: int = 8000
) -> np.ndarray:
    """The base-corrected estimator log p_Z(f(x)) + log|det J_f(x)| at x (n, D), with p_Z a
    cross-validated KDE of the embeddings of (at most max_fit) training samples. A different
    estimator from the full one: it does not assume f(X) ~ N(0, I). Returns (n,)."""
    model = _float64_copy(encoder)
    with torch.no_grad():
        z_train = model(train[:max_fit].double())
        z = model(x.double())
    kde, _ = kde_log_density(z_train, z)
    # kde_log_density whitens the embeddings: a constant shift, invisible to a correlation
    return kde + log_density(encoder, x)["jepa_score"]


def mixture_data(
    dim: int, n_components: int, seed: int, n_train: int, n_eval: int
) -> tuple[GaussianMixture, torch.Tensor, torch.Tensor, np.ndarray]:
    """(mixture, training (n_train, D), held-out (n_eval, D), held-out log p (n_eval,)); the same
    draws as `gmm_density` (training seed + 1, held-out seed + 1000)."""
    mixture = GaussianMixture.random(dim, n_components, seed)
    train = mixture.sample(n_train, seed=seed + 1)
    x = mixture.sample(n_eval, seed=seed + 1000)
    return mixture, train, x, mixture.log_prob(x.double()).numpy()


def score_recipe(
    recipe: GmmRecipe,
    dim: int,
    *,
    n_train: int = 16_000,
    n_components: int = 5,
    seed: int = 0,
    n_eval: int = 2000,
    n_trace: int = 0,
    references: bool = False,
    ml_steps: int = 2000,
) -> dict:
    """Train `recipe` on one mixture and score the held-out samples; one flat row.

    Returns:
        {"full_pearson", "jepa_pearson", "held_out_sigreg", "seconds", the settings, and the trace
        (lists) when n_trace > 0}; with references=True also "kde_pearson", "ml_flow_pearson"
        (maximum-likelihood coupling flow, `ml_steps` steps) and "base_corrected_pearson".
    """
    _, train, x, log_p = mixture_data(dim, n_components, seed, n_train, n_eval)
    start = time.perf_counter()
    encoder, trace = train_recipe(
        recipe, train, seed=seed, trace_x=x, trace_log_p=log_p, n_trace=n_trace
    )
    seconds = time.perf_counter() - start
    parts = log_density(encoder, x)
    with torch.no_grad():
        z = encoder(x.float())
    row = {
        "dim": dim, "n_train": n_train, "n_components": n_components, "seed": seed,
        **asdict(recipe),
        "full_pearson": correlation(parts["full"], log_p),
        "jepa_pearson": correlation(parts["jepa_score"], log_p),
        "held_out_sigreg": float(sigreg(z, 256, generator=torch.Generator().manual_seed(0))),
        "seconds": seconds,
    }  # fmt: skip
    if n_trace:
        row |= {f"trace_{k}": v for k, v in trace.items()}
    if references:
        row["kde_pearson"] = correlation(kde_log_density(train, x)[0], log_p)
        flow = train_ml_flow(train, steps=ml_steps, n_layers=recipe.n_layers, seed=seed)
        row["ml_flow_pearson"] = correlation(log_density(flow, x)["full"], log_p)
        row["base_corrected_pearson"] = correlation(base_corrected(encoder, train, x), log_p)
    return {k: (float(v) if isinstance(v, np.floating) else v) for k, v in row.items()}


def interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): a t-interval of the mean over seeds (NaNs when fewer than 2 values)."""
    from scipy import stats

    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float(values.mean()) if len(values) else math.nan, math.nan, math.nan
    half = stats.t.ppf(0.5 + level / 2, len(values) - 1) * values.std(ddof=1) / len(values) ** 0.5
    return float(values.mean()), float(values.mean() - half), float(values.mean() + half)


def main_effects(table):
    """Per variant and D of a sweep table (one row per run, as `benchmarks/gmm_sweep.py` writes
    it): the mean full Pearson with its 95% t-interval over seeds (each seed is another mixture, so
    this interval holds the spread between mixtures; clipped to [-1, 1]), and the paired difference
    with the base recipe on the same seeds. Returns a pandas DataFrame, one row per (variant, D)."""
    import pandas as pd

    tuning = table[table.phase.isin(["main", "combo"])]
    base = tuning[tuning.variant == "base"].set_index(["dim", "seed"]).full_pearson
    rows = []
    for (variant, dim), cell in tuning.groupby(["variant", "dim"], sort=False):
        mean, low, high = interval(cell.full_pearson)
        low, high = max(low, -1.0), min(high, 1.0)  # a correlation's interval, clipped to [-1, 1]
        paired = (cell.set_index(["dim", "seed"]).full_pearson - base).dropna()
        diff, diff_low, diff_high = interval(paired)
        diff_low, diff_high = max(diff_low, -2.0), min(diff_high, 2.0)  # of two correlations
        rows.append({"factor": cell.factor.iloc[0], "variant": variant, "D": dim,
                     "seeds": len(cell), "full Pearson": mean, "low": low, "high": high,
                     "minus base": diff, "diff low": diff_low, "diff high": diff_high,
                     "held-out SIGReg": cell.held_out_sigreg.mean(),
                     "train seconds": cell.seconds.mean()})  # fmt: skip
    return pd.DataFrame(rows)


REFERENCES = {
    "full_pearson": "full estimator (SIGReg-trained)",
    "kde_pearson": "KDE (CV bandwidth)",
    "ml_flow_pearson": "coupling flow, maximum likelihood",
    "base_corrected_pearson": "base-corrected (other estimator)",
}


def reference_table(table, variant: str = "base"):
    """Mean (over seeds) Pearson of the full estimator of `variant` and of the references on the
    same data and held-out points, per D: a pandas DataFrame indexed by D."""
    rows = table[table.variant == variant]
    return rows.groupby("dim")[list(REFERENCES)].mean().rename(columns=REFERENCES).rename_axis("D")


def held_out_fit(encoder: nn.Module, x: torch.Tensor, log_p: np.ndarray) -> dict[str, float]:
    """{"held_out_sigreg": SIGReg of f(x) (256 fixed slices), "full_pearson": the full
    estimator's Pearson with log_p (n,)} on held-out x (n, D)."""
    with torch.no_grad():
        z = encoder.eval()(x.float())
    return {
        "held_out_sigreg": float(sigreg(z, 256, generator=torch.Generator().manual_seed(0))),
        "full_pearson": correlation(log_density(encoder, x)["full"], log_p),
    }


def sigreg_from_likelihood_fit(
    dim: int,
    *,
    n_train: int = 16_000,
    seed: int = 0,
    n_eval: int = 2000,
    ml_steps: int = 2000,
    lrs: tuple[float, ...] = (2e-3, 2e-4),
    steps: int = 400,
) -> list[dict]:
    """Is the maximum-likelihood map a minimum of the Gaussian-embedding loss? Fit the coupling flow
    by likelihood, then continue training copies of it with pure SIGReg (lam = 1, `steps` steps,
    each learning rate of `lrs`). Returns rows {"start", "lr", "held_out_sigreg", "full_pearson"}."""
    import copy

    _, train, x, log_p = mixture_data(dim, 5, seed, n_train, n_eval)
    flow = train_ml_flow(train, steps=ml_steps, seed=seed)
    rows = [{"start": "likelihood fit", "lr": 0.0, **held_out_fit(flow, x, log_p)}]
    for lr in lrs:
        recipe = BASE.but(encoder="coupling", lam=1.0, lr=lr, steps=steps)
        tuned, _ = train_recipe(recipe, train, seed=seed, encoder=copy.deepcopy(flow))
        rows.append(
            {"start": "likelihood fit, then SIGReg", "lr": lr, **held_out_fit(tuned, x, log_p)}
        )
    return [{"dim": dim, "seed": seed, **row} for row in rows]
