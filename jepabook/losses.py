"""JEPA losses: SIGReg (sliced Epps-Pulley), VICReg-style moment matching, the prediction term.

A Gaussian-embedding JEPA minimises (1 - lambda) * prediction + lambda * anti-collapse, where the
anti-collapse term pushes the law of the embeddings towards N(0, I_K).
"""

from __future__ import annotations

import torch
from torch import nn

from jepabook.devices import same_device


def epps_pulley_grid(
    n_points: int = 17, t_max: float = 3.0, *, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Trapezoid nodes t (T,) on [0, t_max] and weights (T,) including w(t) = exp(-t^2/2) and the
    factor 2 for the symmetric half-line [-t_max, 0]."""
    t = torch.linspace(0.0, t_max, n_points, device=device)
    step = t_max / (n_points - 1)
    trapezoid = torch.full((n_points,), step, device=device)
    trapezoid[[0, -1]] = step / 2
    return t, 2.0 * trapezoid * torch.exp(-0.5 * t**2)


def epps_pulley(projections: torch.Tensor, n_points: int = 17, t_max: float = 3.0) -> torch.Tensor:
    """Epps-Pulley statistic of each column against N(0, 1).

    N * integral |phi_N(t) - exp(-t^2/2)|^2 exp(-t^2/2) dt, with phi_N the empirical characteristic
    function of the column, by the trapezoid rule.

    Args:
        projections: (N, M) samples, one 1-D sample per column.

    Returns:
        (M,) statistics; about 1-2 for N(0, 1) data whatever N, growing with N otherwise.
    """
    n = projections.shape[0]
    t, weights = epps_pulley_grid(n_points, t_max, device=projections.device)
    t, weights = t.to(projections.dtype), weights.to(projections.dtype)
    real, imaginary = _EmpiricalCharacteristicFunction.apply(projections, t)  # (M, T) each
    real = real - torch.exp(-0.5 * t**2)
    return n * ((real**2 + imaginary**2) * weights).sum(-1)


class _EmpiricalCharacteristicFunction(torch.autograd.Function):
    """(N, M) samples, (T,) nodes -> real and imaginary parts (M, T) of mean_n exp(i t x_nm).

    Saves cos and sin for the backward pass instead of letting autograd recompute them: about
    twice as fast as the plain autograd graph, which is what a training step spends most time on.
    """

    @staticmethod
    def forward(ctx, projections: torch.Tensor, t: torch.Tensor):
        angles = projections.unsqueeze(-1) * t  # (N, M, T)
        cos, sin = torch.cos(angles), torch.sin(angles)
        ctx.save_for_backward(cos, sin, t)
        return cos.mean(0), sin.mean(0)

    @staticmethod
    def backward(ctx, grad_real: torch.Tensor, grad_imaginary: torch.Tensor):
        cos, sin, t = ctx.saved_tensors
        grad = torch.einsum("nmt,mt->nm", cos, grad_imaginary * t)
        grad -= torch.einsum("nmt,mt->nm", sin, grad_real * t)
        return grad / cos.shape[0], None


def random_directions(
    dim: int, n_slices: int, *, generator: torch.Generator | None = None, device=None, dtype=None
) -> torch.Tensor:
    """(dim, n_slices) unit vectors, uniform on the sphere."""
    directions = torch.randn(dim, n_slices, generator=generator, device=device, dtype=dtype)
    return directions / directions.norm(dim=0, keepdim=True)


def sigreg(
    z: torch.Tensor,
    n_slices: int = 256,
    *,
    generator: torch.Generator | None = None,
    n_points: int = 17,
    t_max: float = 3.0,
) -> torch.Tensor:
    """SIGReg: the mean Epps-Pulley statistic of the embeddings over random 1-D projections.

    Directions are drawn afresh at every call (pass a seeded `generator` on z's device to fix them).

    Args:
        z: (N, K) embeddings.
        n_slices: number of random directions.

    Returns:
        () scalar, differentiable in z.
    """
    _check_embeddings(z, "z")
    if generator is not None and not same_device(generator.device, z.device):
        raise ValueError(f"generator: expected one on {z.device}, got one on {generator.device}")
    directions = random_directions(
        z.shape[1], n_slices, generator=generator, device=z.device, dtype=z.dtype
    )
    return epps_pulley(z @ directions, n_points, t_max).mean()


def moment_matching(z: torch.Tensor) -> torch.Tensor:
    """VICReg-style moment matching to N(0, I): ||mean||^2 / K + ||Cov - I||_F^2 / K.

    Matches only the first two moments, so non-Gaussian laws with zero mean and identity
    covariance (uniform, bimodal) reach zero: the shortcut SIGReg closes.

    Args:
        z: (N, K) embeddings.

    Returns:
        () scalar.
    """
    _check_embeddings(z, "z")
    k = z.shape[1]
    mean = z.mean(0)
    centred = z - mean
    covariance = centred.T @ centred / (z.shape[0] - 1)
    identity = torch.eye(k, device=z.device, dtype=z.dtype)
    return (mean.pow(2).sum() + (covariance - identity).pow(2).sum()) / k


def prediction_loss(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error between predicted (N, K) and target (N, K) embeddings, per coordinate."""
    if predicted.shape != target.shape:
        raise ValueError(
            f"predicted and target: expected equal shapes, got {tuple(predicted.shape)} "
            f"and {tuple(target.shape)}"
        )
    return (predicted - target).pow(2).mean()


class VectorViews(nn.Module):
    """Perturbed views of vector data: Gaussian noise plus random masking of coordinates.

    Args:
        noise: standard deviation of the additive noise.
        mask: probability of zeroing each coordinate.
    """

    def __init__(self, noise: float = 0.1, mask: float = 0.0):
        super().__init__()
        if noise < 0 or not 0 <= mask < 1:
            raise ValueError(
                f"noise and mask: expected noise >= 0 and 0 <= mask < 1, got {noise}, {mask}"
            )
        self.noise, self.mask = noise, mask

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(N, D) -> (N, D) one random view of each sample."""
        view = x + self.noise * torch.randn(
            x.shape, generator=generator, device=x.device, dtype=x.dtype
        )
        if self.mask > 0:
            keep = torch.rand(x.shape, generator=generator, device=x.device) >= self.mask
            view = view * keep
        return view


def _check_embeddings(z: torch.Tensor, name: str) -> None:
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(
            f"{name}: expected embeddings of shape (N, K) with N >= 2, got {tuple(z.shape)}"
        )


def gaussian_reference(n: int, k: int, n_slices: int = 256, seed: int = 0) -> float:
    """SIGReg of exact N(0, I_K) samples of size n: the value a perfectly Gaussian embedding reaches."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, generator=g)
    return float(sigreg(z, n_slices, generator=g))
