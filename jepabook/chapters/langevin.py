"""The Langevin chapter (Figure 2, bottom): samplers compared against the true law (MMD, energy
distance, per-mode weights), a shuffled-score control, and the density estimates on held-out points.
"""

from __future__ import annotations

import time

import torch
from torch import nn

from jepabook.data import GaussianMixture
from jepabook.density import change_of_variables
from jepabook.langevin import Estimator, Schedule, ScoreFn, langevin
from jepabook.metrics import energy_distance, mmd2_unbiased


def shuffled_score(score: ScoreFn, seed: int = 0) -> ScoreFn:
    """A broken control: the score of each point handed to a random other point (fixed permutation
    per call size)."""

    def wrong(x: torch.Tensor) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return score(x)[torch.randperm(x.shape[0], generator=g).to(x.device)]

    return wrong


def assign_modes(mixture: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    """(n,) index of the component of highest responsibility for each sample x (n, D)."""
    return mixture.component_log_probs(x).argmax(1)


def mode_weights(mixture: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    """(C,) float64 fraction of the samples x (n, D) assigned to each component."""
    counts = torch.bincount(assign_modes(mixture, x), minlength=mixture.n_components)
    return counts.double() / x.shape[0]


def weight_error(mixture: GaussianMixture, x: torch.Tensor, reference: torch.Tensor) -> float:
    """Total variation 1/2 sum_c |w_c(x) - w_c(reference)| between per-mode weights of two sample sets.

    The reference is a sample of the true law: hard assignment of overlapping components does not
    give back the mixture weights exactly, so both sides are assigned the same way.
    """
    return 0.5 * float((mode_weights(mixture, x) - mode_weights(mixture, reference)).abs().sum())


def estimate_log_density(
    model: nn.Module, x: torch.Tensor, kind: Estimator = "full"
) -> torch.Tensor:
    """The (detached) JEPA density estimate at x (n, D): JEPA-SCORE, plus log N(f(x)) if "full": (n,)."""
    if kind not in ("jepa", "full"):
        raise ValueError(f"kind: expected 'jepa' or 'full', got {kind!r}")
    return change_of_variables(model, x)["full" if kind == "full" else "jepa_score"]


def noise_floor(
    mixture: GaussianMixture,
    reference: torch.Tensor,
    bandwidths: torch.Tensor,
    *,
    n: int,
    repeats: int = 5,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """The distances a perfect sampler gets: `repeats` fresh true samples of size n vs `reference`.

    Returns:
        {"mmd2": (repeats,), "energy": (repeats,), "weight_tv": (repeats,)} float64 tensors.
    """
    rows = [
        sample_distances(mixture, mixture.sample(n, seed=seed + r), reference, bandwidths)
        for r in range(repeats)
    ]
    return {k: torch.tensor([row[k] for row in rows], dtype=torch.float64) for k in rows[0]}


def sample_distances(
    mixture: GaussianMixture, x: torch.Tensor, reference: torch.Tensor, bandwidths: torch.Tensor
) -> dict[str, float]:
    """MMD^2 (RBF ladder, unbiased), energy distance and per-mode weight TV of x (n, D) vs reference."""
    return {
        "mmd2": mmd2_unbiased(x, reference, bandwidths),
        "energy": energy_distance(x, reference),
        "weight_tv": weight_error(mixture, x, reference),
    }


def run_samplers(
    scores: dict[str, ScoreFn],
    schedules: dict[str, Schedule],
    x0: torch.Tensor,
    *,
    seed: int = 0,
    max_drift: float | None = None,
) -> tuple[dict[tuple[str, str], torch.Tensor], dict[tuple[str, str], float]]:
    """Every score under every schedule, from the same starting points and noise seed.

    Returns:
        ({(score name, schedule name): (n, D) final states}, {same keys: seconds taken}).
    """
    samples, seconds = {}, {}
    for schedule_name, schedule in schedules.items():
        for score_name, score in scores.items():
            start = time.perf_counter()
            samples[score_name, schedule_name] = langevin(
                score, x0, schedule, seed=seed, max_drift=max_drift
            )
            seconds[score_name, schedule_name] = time.perf_counter() - start
    return samples, seconds
