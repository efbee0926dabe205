"""Langevin samplers driven by a score function, and the score of a JEPA density estimate.

A score function maps points x (n, D) to grad log p(x) (n, D). Unadjusted Langevin (ULA) iterates

    x <- x + h * beta * s(x) + sqrt(2 h) * xi,    xi ~ N(0, I),

which, for a small step h and beta = 1, leaves (nearly) p invariant; with beta < 1 it targets the
flatter, tempered law p^beta. `langevin` runs any schedule of (h_t, beta_t); `constant_schedule` is
plain ULA and `annealed_schedule` raises beta from beta_start to 1 (so chains first cross between
modes of a flattened law) while the step size shrinks from step_start to step_end (so the final
discretisation bias is small).

Scores of an encoder's density estimate (for small D, differentiable Jacobians by autograd):

- "jepa": JEPA-SCORE(x) = sum_k log max(sigma_k(J_f(x)), eps), the paper's estimator;
- "full": JEPA-SCORE(x) + log N(f(x); 0, I), the change-of-variables estimate of log p(x) (K = D).

`estimator_score(encoder, kind)` returns x -> grad_x of either, a score function the samplers take.
`mode_weights` assigns samples to the mixture component of highest responsibility (per-mode weight
recovery).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from jepabook.density import log_standard_normal

ScoreFn = Callable[[torch.Tensor], torch.Tensor]
Estimator = Literal["jepa", "full"]


# --------------------------------------------------------------------------------------------------
# Samplers
# --------------------------------------------------------------------------------------------------


@dataclass
class Schedule:
    """Per-iteration step sizes and inverse temperatures, each (T,) float64."""

    steps: torch.Tensor
    betas: torch.Tensor

    def __post_init__(self) -> None:
        self.steps = torch.as_tensor(self.steps, dtype=torch.float64)
        self.betas = torch.as_tensor(self.betas, dtype=torch.float64)
        if self.steps.ndim != 1 or self.steps.shape != self.betas.shape or len(self.steps) < 1:
            raise ValueError(
                f"steps, betas: expected two (T,) tensors with T >= 1, got "
                f"{tuple(self.steps.shape)} and {tuple(self.betas.shape)}"
            )
        if not bool((self.steps > 0).all()) or not bool((self.betas > 0).all()):
            raise ValueError("steps, betas: expected positive values")

    def __len__(self) -> int:
        return len(self.steps)


def constant_schedule(step: float, n_steps: int) -> Schedule:
    """Plain unadjusted Langevin: step size `step`, beta = 1, for `n_steps` iterations."""
    return Schedule(torch.full((n_steps,), float(step)), torch.ones(n_steps))


def annealed_schedule(
    n_steps: int,
    *,
    step_start: float,
    step_end: float,
    beta_start: float = 0.2,
    anneal_fraction: float = 0.5,
) -> Schedule:
    """Tempered, shrinking-step Langevin.

    beta rises geometrically from `beta_start` to 1 over the first `anneal_fraction` of the iterations
    and stays at 1; the step size decays geometrically from `step_start` to `step_end` over all of them.
    """
    if not 0 < beta_start <= 1 or not 0 <= anneal_fraction <= 1:
        raise ValueError(
            f"beta_start, anneal_fraction: expected (0, 1] and [0, 1], got {beta_start}, "
            f"{anneal_fraction}"
        )
    t = torch.linspace(0, 1, n_steps, dtype=torch.float64)
    steps = step_start * (step_end / step_start) ** t
    ramp = (t / anneal_fraction).clamp(max=1) if anneal_fraction > 0 else torch.ones_like(t)
    betas = beta_start ** (1 - ramp)
    return Schedule(steps, betas)


def langevin(
    score: ScoreFn,
    x0: torch.Tensor,
    schedule: Schedule,
    *,
    seed: int = 0,
    max_drift: float | None = None,
) -> torch.Tensor:
    """Run n chains of (tempered) unadjusted Langevin from x0.

    Args:
        score: x (n, D) -> grad log p(x) (n, D).
        x0: (n, D) starting points (one chain each).
        schedule: step sizes h_t and inverse temperatures beta_t.
        seed: seed of the Gaussian noise.
        max_drift: if set, each chain's drift h * beta * s(x) is clipped to this Euclidean norm (a
            guard against an estimated score that explodes far from the data).

    Returns:
        (n, D) final states, float64.

    Raises:
        FloatingPointError: a chain became NaN/inf (naming the chain and the iteration).
    """
    if x0.ndim != 2:
        raise ValueError(f"x0: expected shape (n, D), got {tuple(x0.shape)}")
    g = torch.Generator(device=x0.device).manual_seed(seed)
    x = x0.detach().to(torch.float64).clone()
    for t, (h, beta) in enumerate(
        zip(schedule.steps.tolist(), schedule.betas.tolist(), strict=True)
    ):
        s = score(x).detach().to(torch.float64)
        if s.shape != x.shape:
            raise ValueError(
                f"score: expected output of shape {tuple(x.shape)}, got {tuple(s.shape)}"
            )
        drift = h * beta * s
        if max_drift is not None:
            norm = drift.norm(dim=1, keepdim=True).clamp(min=1e-300)
            drift = drift * (max_drift / norm).clamp(max=1.0)
        noise = torch.randn(x.shape, generator=g, dtype=x.dtype, device=x.device)
        x = x + drift + math.sqrt(2 * h) * noise
        bad = ~torch.isfinite(x).all(1)
        if bool(bad.any()):
            raise FloatingPointError(
                f"Langevin chain {int(bad.nonzero()[0])} became non-finite at iteration {t}"
            )
    return x


# --------------------------------------------------------------------------------------------------
# Differentiable JEPA-SCORE and its gradient
# --------------------------------------------------------------------------------------------------


def jacobian_with_graph(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor):
    """Per-sample Jacobians that stay differentiable in x (for models that do not mix samples).

    Uses the batch-sum trick: row k of every J_f(x_b) is grad_x sum_b f_k(x_b), one backward pass per
    output with create_graph=True.

    Args:
        model: (n, D) -> (n, K).
        x: (n, D) with requires_grad=True.

    Returns:
        (f(x) (n, K), J (n, K, D)), both part of the autograd graph of x.
    """
    z = model(x)
    if z.ndim != 2 or z.shape[0] != x.shape[0]:
        raise ValueError(
            f"model: expected output (n, K) for n = {x.shape[0]}, got {tuple(z.shape)}"
        )
    rows = [torch.autograd.grad(z[:, k].sum(), x, create_graph=True)[0] for k in range(z.shape[1])]
    return z, torch.stack(rows, dim=1)


def log_singular_sum(J: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Differentiable sum_k log max(sigma_k(J), eps) for J (n, K, D): (n,) (JEPA-SCORE's formula).

    For square J the log|det| is used directly (its gradient does not go through singular vectors);
    otherwise torch.linalg.svdvals, whose gradient is stable. Where the clip is active (sigma < eps)
    the gradient is zero, as for the clipped score.
    """
    if J.shape[-1] == J.shape[-2]:
        _, logabsdet = torch.linalg.slogdet(J)
        sigma_min = torch.linalg.svdvals(J.detach())[..., -1]
        if bool((sigma_min >= eps).all()):
            return logabsdet
    return torch.linalg.svdvals(J).clamp(min=eps).log().sum(-1)


def estimator_log_density(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    kind: Estimator = "full",
    eps: float = 1e-6,
) -> torch.Tensor:
    """A JEPA density estimate at x (n, D), differentiable in x: (n,).

    kind="jepa": JEPA-SCORE(x); kind="full": JEPA-SCORE(x) + log N(f(x); 0, I_K).
    """
    if kind not in ("jepa", "full"):
        raise ValueError(f"kind: expected 'jepa' or 'full', got {kind!r}")
    z, J = jacobian_with_graph(model, x)
    value = log_singular_sum(J, eps)
    if kind == "full":
        value = value + log_standard_normal(z)
    return value


def estimator_score(
    model: nn.Module,
    kind: Estimator = "full",
    *,
    eps: float = 1e-6,
    dtype: torch.dtype = torch.float64,
    chunk_size: int = 4096,
) -> ScoreFn:
    """The gradient of a JEPA density estimate, as a score function x (n, D) -> (n, D).

    The model is copied, put in eval mode, frozen and cast to `dtype` (float64 by default: the score is a
    second derivative of the encoder). Cost per call: K backward passes with graph, then one more.
    """
    if kind not in ("jepa", "full"):
        raise ValueError(f"kind: expected 'jepa' or 'full', got {kind!r}")
    frozen = copy.deepcopy(model).eval().to(dtype)
    for p in frozen.parameters():
        p.requires_grad_(False)

    def score(x: torch.Tensor) -> torch.Tensor:
        out = []
        with torch.enable_grad():
            for chunk in x.detach().to(dtype).split(chunk_size):
                chunk = chunk.clone().requires_grad_(True)
                value = estimator_log_density(frozen, chunk, kind, eps)
                value = value + 0 * chunk.sum(
                    -1
                )  # a constant estimate (affine f) has zero gradient
                out.append(torch.autograd.grad(value.sum(), chunk)[0])
        return torch.cat(out).to(x.dtype)

    return score


# --------------------------------------------------------------------------------------------------
# Per-mode weight recovery
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# Comparing samplers against the true law
# --------------------------------------------------------------------------------------------------
