"""Data laws with exact densities: the Gaussian mixture used throughout the book."""

from __future__ import annotations

import math
from typing import Literal

import torch

Covariance = Literal["full", "isotropic"]


class GaussianMixture:
    """A Gaussian mixture in R^D with exact, normalised log-density and score.

    Args:
        weights: (C,) positive mixture weights (normalised here).
        means: (C, D) component means.
        covariances: (C, D, D) symmetric positive-definite component covariances.

    Parameters are stored in float64; inputs of any floating dtype are accepted and results come back in it.
    """

    def __init__(self, weights: torch.Tensor, means: torch.Tensor, covariances: torch.Tensor):
        weights, means, covariances = (
            torch.as_tensor(t, dtype=torch.float64) for t in (weights, means, covariances)
        )
        if means.ndim != 2:
            raise ValueError(f"means: expected shape (C, D), got {tuple(means.shape)}")
        C, D = means.shape
        if weights.shape != (C,) or not bool((weights > 0).all()):
            raise ValueError(
                f"weights: expected {C} positive numbers, got shape {tuple(weights.shape)}"
            )
        if covariances.shape != (C, D, D):
            raise ValueError(
                f"covariances: expected shape ({C}, {D}, {D}), got {tuple(covariances.shape)}"
            )
        self.weights = weights / weights.sum()
        self.means = means
        self.covariances = covariances
        self.cholesky = torch.linalg.cholesky(covariances)  # raises if not positive-definite

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    @classmethod
    def random(
        cls,
        dim: int,
        n_components: int,
        seed: int = 0,
        *,
        covariance: Covariance = "full",
        separation: float = 2.5,
    ) -> GaussianMixture:
        """A random mixture whose components overlap partially, with unequal weights and scales.

        Means are drawn with spread `separation` / sqrt(dim) per coordinate, so the typical distance
        between two means (about 1.4 * separation) does not grow with `dim`; component scales lie in
        [0.4, 1.0] and weights come from a Dirichlet(2) draw.
        """
        if dim < 1 or n_components < 1:
            raise ValueError(f"dim and n_components: expected >= 1, got {dim} and {n_components}")
        if covariance not in ("full", "isotropic"):
            raise ValueError(f"covariance: expected 'full' or 'isotropic', got {covariance!r}")
        g = torch.Generator().manual_seed(seed)
        means = torch.randn(n_components, dim, generator=g, dtype=torch.float64)
        means *= separation / math.sqrt(dim)
        # Dirichlet(2) weights: normalised Gamma(2, 1) draws, each a sum of two Exp(1).
        weights = -torch.log(torch.rand(n_components, 2, generator=g, dtype=torch.float64)).sum(1)
        if covariance == "isotropic":
            scales = 0.4 + 0.6 * torch.rand(n_components, generator=g, dtype=torch.float64)
            covariances = scales[:, None, None] ** 2 * torch.eye(dim, dtype=torch.float64)
        else:
            scales = 0.4 + 0.6 * torch.rand(n_components, dim, generator=g, dtype=torch.float64)
            rotations, _ = torch.linalg.qr(
                torch.randn(n_components, dim, dim, generator=g, dtype=torch.float64)
            )
            covariances = rotations @ torch.diag_embed(scales**2) @ rotations.transpose(1, 2)
            covariances = 0.5 * (covariances + covariances.transpose(1, 2))
        return cls(weights, means, covariances)

    def sample(self, n: int, seed: int | None = None) -> torch.Tensor:
        """(n, D) float32 samples; `seed` makes them repeatable."""
        g = seeded_generator(seed)
        components = torch.multinomial(self.weights, n, replacement=True, generator=g)
        noise = torch.randn(n, self.dim, 1, generator=g, dtype=torch.float64)
        x = self.means[components] + (self.cholesky[components] @ noise).squeeze(-1)
        return x.float()

    def component_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """(n, C) log(weight_c) + log N(x; mean_c, cov_c), in float64."""
        x = self._as_points(x).to(torch.float64)
        diff = x[:, None, :] - self.means[None]  # (n, C, D)
        L = self.cholesky.expand(x.shape[0], -1, -1, -1)
        whitened = torch.linalg.solve_triangular(L, diff.unsqueeze(-1), upper=False).squeeze(-1)
        half_logdet = self.cholesky.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # (C,)
        log_norm = -0.5 * self.dim * math.log(2 * math.pi) - half_logdet
        return self.weights.log() + log_norm - 0.5 * whitened.pow(2).sum(-1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """(n,) exact log-density at x (n, D), in x's dtype."""
        return torch.logsumexp(self.component_log_probs(x), dim=1).to(_dtype_of(x))

    def score(self, x: torch.Tensor) -> torch.Tensor:
        """(n, D) gradient of log_prob at x (n, D), in closed form."""
        points = self._as_points(x).to(torch.float64)
        responsibilities = torch.softmax(self.component_log_probs(points), dim=1)  # (n, C)
        diff = self.means[None] - points[:, None, :]  # (n, C, D)
        precision_diff = torch.cholesky_solve(diff.unsqueeze(-1), self.cholesky).squeeze(-1)
        return (responsibilities.unsqueeze(-1) * precision_diff).sum(1).to(_dtype_of(x))

    def _as_points(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x: expected shape (n, {self.dim}), got {tuple(x.shape)}")
        return x

    def __repr__(self) -> str:
        return f"GaussianMixture(dim={self.dim}, n_components={self.n_components})"


def seeded_generator(seed: int | None) -> torch.Generator:
    """A CPU generator seeded with `seed`, or from fresh entropy when seed is None."""
    g = torch.Generator()
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


def _dtype_of(x: torch.Tensor) -> torch.dtype:
    x = torch.as_tensor(x)
    return x.dtype if x.is_floating_point() else torch.float64
