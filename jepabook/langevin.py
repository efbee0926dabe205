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

`estimator_log_density_fn(encoder, kind)` returns x -> either estimate, differentiable in x;
`score_of` turns any such log-density function into a score function, and `estimator_score(encoder,
kind)` is the two composed. `kde_log_density_fn` is a Gaussian kernel density estimate in the same
form (a reference sampler).

`mala` is the Metropolis-adjusted version of `langevin`: each proposal is accepted with the
Metropolis-Hastings probability computed from the log-density function itself, so the chain's target
is exp(beta * log_density) exactly (for an estimator: the *estimated* law, not the data law).
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
from jepabook.models import whitening_of

ScoreFn = Callable[[torch.Tensor], torch.Tensor]
LogDensityFn = Callable[[torch.Tensor], torch.Tensor]  # x (n, D) -> (n,), differentiable in x
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
        drift = _clipped(h * beta * s, max_drift)
        noise = torch.randn(x.shape, generator=g, dtype=x.dtype, device=x.device)
        x = x + drift + math.sqrt(2 * h) * noise
        bad = ~torch.isfinite(x).all(1)
        if bool(bad.any()):
            raise FloatingPointError(
                f"Langevin chain {int(bad.nonzero()[0])} became non-finite at iteration {t}"
            )
    return x


def _clipped(drift: torch.Tensor, max_drift: float | None) -> torch.Tensor:
    """Each row of drift (n, D) scaled down to Euclidean norm at most max_drift (if set)."""
    if max_drift is None:
        return drift
    norm = drift.norm(dim=1, keepdim=True).clamp(min=1e-300)
    return drift * (max_drift / norm).clamp(max=1.0)


def mala(
    log_density: LogDensityFn,
    x0: torch.Tensor,
    schedule: Schedule,
    *,
    seed: int = 0,
    max_drift: float | None = None,
    chunk_size: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run n chains of (tempered) Metropolis-adjusted Langevin (MALA) from x0.

    At iteration t the proposal is y = x + c(h beta grad L(x)) + sqrt(2 h) xi (c: the drift clip)
    and it is accepted with probability min(1, exp(beta (L(y) - L(x)) + log q(x | y) - log q(y | x))),
    q(y | x) = N(y; x + c(h beta grad L(x)), 2 h I). The chain leaves exp(beta_t L) invariant exactly,
    for any step size: the discretisation bias of `langevin` is gone, the error of L is not.

    Args:
        log_density: L, x (n, D) -> (n,), differentiable in x (an estimate of log p up to a constant).
        x0: (n, D) starting points (one chain each).
        schedule: step sizes h_t and inverse temperatures beta_t.
        seed: seed of the proposal noise and of the accept/reject draws.
        max_drift: as in `langevin` (the clip is part of q, so the chain stays exact).
        chunk_size: chains per autograd pass.

    Returns:
        ((n, D) final states float64, (T,) fraction of chains that accepted at each iteration).
    """
    if x0.ndim != 2:
        raise ValueError(f"x0: expected shape (n, D), got {tuple(x0.shape)}")
    g = torch.Generator(device=x0.device).manual_seed(seed)
    x = x0.detach().to(torch.float64).clone()
    value, score = value_and_score(log_density, x, chunk_size)
    accepted = []
    for h, beta in zip(schedule.steps.tolist(), schedule.betas.tolist(), strict=True):
        forward = _clipped(h * beta * score, max_drift)
        noise = torch.randn(x.shape, generator=g, dtype=x.dtype, device=x.device)
        y = x + forward + math.sqrt(2 * h) * noise
        y_value, y_score = value_and_score(log_density, y, chunk_size)
        backward = _clipped(h * beta * y_score, max_drift)
        log_q_forward = -(y - x - forward).pow(2).sum(1) / (4 * h)
        log_q_backward = -(x - y - backward).pow(2).sum(1) / (4 * h)
        log_ratio = beta * (y_value - value) + log_q_backward - log_q_forward
        uniform = torch.rand(x.shape[0], generator=g, dtype=x.dtype, device=x.device)
        accept = torch.isfinite(log_ratio) & (uniform.log() < log_ratio)
        x = torch.where(accept[:, None], y, x)
        value = torch.where(accept, y_value, value)
        score = torch.where(accept[:, None], y_score, score)
        accepted.append(accept.double().mean())
    return x, torch.stack(accepted)


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


def estimator_log_density_fn(
    model: nn.Module,
    kind: Estimator = "full",
    *,
    eps: float = 1e-6,
    dtype: torch.dtype = torch.float64,
) -> LogDensityFn:
    """A JEPA density estimate as a function x (n, D) -> (n,), differentiable in x.

    The model is copied, put in eval mode, frozen and cast to `dtype` (float64 by default: the score
    is a second derivative of the encoder). A model with a `forward_and_log_det` method (a bijective
    flow, K = D) gives its exact log|det J_f(x)| in closed form, which is JEPA-SCORE (no singular
    value below eps); any other model goes through autograd Jacobians (`estimator_log_density`).
    """
    if kind not in ("jepa", "full"):
        raise ValueError(f"kind: expected 'jepa' or 'full', got {kind!r}")
    frozen = copy.deepcopy(model).eval().to(dtype)
    for p in frozen.parameters():
        p.requires_grad_(False)

    if hasattr(
        frozen, "forward_and_log_det"
    ):  # a flow (flows.CouplingFlow): closed-form log|det J|

        def flow_log_density(x: torch.Tensor) -> torch.Tensor:
            z, log_det = frozen.forward_and_log_det(x.to(dtype))
            return log_det + log_standard_normal(z) if kind == "full" else log_det

        return flow_log_density

    def log_density(x: torch.Tensor) -> torch.Tensor:
        return estimator_log_density(frozen, x.to(dtype), kind, eps)

    return log_density


def value_and_score(
    log_density: LogDensityFn, x: torch.Tensor, chunk_size: int = 4096
) -> tuple[torch.Tensor, torch.Tensor]:
    """L(x) (n,) and grad_x L(x) (n, D) for a log-density function L at x (n, D), in x's dtype.

    Runs `chunk_size` points per autograd pass (L must treat points independently).
    """
    values, grads = [], []
    with torch.enable_grad():
        for chunk in x.detach().split(chunk_size):
            chunk = chunk.clone().requires_grad_(True)
            value = log_density(chunk)
            value = value + 0 * chunk.sum(-1)  # a constant estimate (affine f) has zero gradient
            grads.append(torch.autograd.grad(value.sum(), chunk)[0])
            values.append(value.detach())
    return torch.cat(values).to(x.dtype), torch.cat(grads).to(x.dtype)


def score_of(log_density: LogDensityFn, chunk_size: int = 4096) -> ScoreFn:
    """The score function x (n, D) -> grad_x L(x) (n, D) of a log-density function L (autograd)."""

    def score(x: torch.Tensor) -> torch.Tensor:
        return value_and_score(log_density, x, chunk_size)[1]

    return score


def estimator_score(
    model: nn.Module,
    kind: Estimator = "full",
    *,
    eps: float = 1e-6,
    dtype: torch.dtype = torch.float64,
    chunk_size: int = 4096,
) -> ScoreFn:
    """The gradient of a JEPA density estimate, as a score function x (n, D) -> (n, D).

    `score_of(estimator_log_density_fn(model, kind))`, computed in `dtype` and returned in x's dtype.
    Cost per call: K backward passes with graph, then one more.
    """
    log_density = estimator_log_density_fn(model, kind, eps=eps, dtype=dtype)

    def score(x: torch.Tensor) -> torch.Tensor:
        return value_and_score(log_density, x.to(dtype), chunk_size)[1].to(x.dtype)

    return score


def kde_log_density_fn(
    train: torch.Tensor, bandwidth: float, *, max_points: int | None = None
) -> LogDensityFn:
    """A Gaussian kernel density estimate of train (N, D), as x (n, D) -> (n,) log-density,
    differentiable in x, float64.

    The kernel is isotropic in whitened coordinates u = W (x - m) (`models.whitening_of`) with
    standard deviation `bandwidth` there (the units of `gmm_recipes.kde_log_density`'s chosen
    bandwidth); the result is the normalised log-density in x (the whitening's log|det W| included).
    With max_points, only the first max_points training samples are kernel centres.
    """
    mean, whitening = whitening_of(train)
    centres = ((train[:max_points].double() - mean) @ whitening.T) / bandwidth  # (N, D)
    dim = train.shape[1]
    constant = (
        torch.linalg.slogdet(whitening)[1]
        - dim * math.log(bandwidth)
        - 0.5 * dim * math.log(2 * math.pi)
        - math.log(centres.shape[0])
    )

    def log_density(x: torch.Tensor) -> torch.Tensor:
        u = ((x.double() - mean) @ whitening.T) / bandwidth  # (n, D)
        squared = u.pow(2).sum(1, keepdim=True) - 2 * u @ centres.T + centres.pow(2).sum(1)
        return torch.logsumexp(-0.5 * squared.clamp(min=0), dim=1) + constant

    return log_density
