"""Exact maps with known inverses and Jacobians: the encoders of the change-of-variables chapter.

Every map here is an `nn.Module` whose `forward` is the *encoder* direction, data x -> code z, so it can
be handed to `jepabook.jepa_score` as it is. Parameters are float64 buffers; the computation runs in
float64 and comes back in the input's dtype, so float64 inputs give float64 Jacobians.

- `Bijection`: the interface (forward, inverse, closed-form log|det J|), with `Affine`,
  `AffineCoupling`, `NormalCDF` and `Chain` to build invertible nonlinear maps, and `banana_flow()`,
  a fixed 2-D example.
- `RosenblattMap`: the exact Gaussianising map of a `GaussianMixture` in any dimension (the
  Knothe-Rosenblatt map z_d = Phi^{-1}(F(x_d | x_<d))), the "perfect encoder": it pushes the mixture
  onto N(0, I_D) exactly. `decompose_log_density` returns log p, JEPA-SCORE and log N(f(x)) at once;
  `Chain(RosenblattMap(m), NormalCDF(D))` is the encoder with a uniform code, whose JEPA-SCORE is log p.
- `RadialGaussianizer` and `RadialAngularLaw`: a K = 1 < D = 2 encoder that only sees the radius, and
  a family of 2-D laws that share its radial law (the level-set example); `circle_coarea_integral`.
- `warp_grid` (a regular grid warped by a 2-D map), `regular_grid` and `histogram_chi_square`
  (quadrature and histogram checks of a 2-D density).
- `log_ndtr`, `ndtri_from_logs`: normal CDF / quantile in log space, accurate in both tails.

Size: over 500 lines because these exact maps and their quadrature checks are one toolbox (the
Rosenblatt map needs the tail-accurate normal functions, the level-set example needs the coarea
integral), used together by the change-of-variables and intro chapters and by the density tests.

Change of variables (K = D): if Z = f(X) ~ N(0, I) then
    log p_X(x) = log N(f(x); 0, I) + log|det J_f(x)| = log N(f(x); 0, I) + JEPA-SCORE(x).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from jepabook.data import GaussianMixture, seeded_generator
from jepabook.density import LOG_2PI, change_of_variables, log_standard_normal
from jepabook.score import jepa_score

SQRT_HALF = math.sqrt(0.5)
_NDTRI_SAFE_LOG = -700.0  # below this, exp() of a log-probability is too close to float64 underflow


# --------------------------------------------------------------------------------------------------
# Normal helpers
# --------------------------------------------------------------------------------------------------


def log_ndtr(x: torch.Tensor) -> torch.Tensor:
    """log Phi(x), accurate in both tails, from erfcx (which, unlike torch.special.log_ndtr, has a
    vmap batching rule, so Jacobians through it stay fast).

    With u = |x|, the smaller tail is log Phi(-u) = log(erfcx(u / sqrt 2) / 2) - u^2 / 2 (no underflow);
    log Phi(x) is that for x < 0 and log1p(-Phi(-u)) for x >= 0.
    """
    left_side = x < 0
    u = torch.where(left_side, -x, x)  # |x|, with derivative +1 at 0
    log_tail = torch.log(0.5 * torch.special.erfcx(u * SQRT_HALF)) - 0.5 * u.pow(2)
    return torch.where(left_side, log_tail, torch.log1p(-torch.exp(log_tail)))


def ndtri_from_logs(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """The normal quantile z = Phi^{-1}(p), given log p and log q = log(1 - p), both accurate.

    The smaller of p and q is inverted (Phi^{-1}(p) = -Phi^{-1}(q)), so neither tail loses digits to
    1 - p rounding; below p = e^-700 an asymptotic start and Newton steps on log Phi replace ndtri.
    Differentiable; any shape (float64 recommended).
    """
    lower = log_p <= log_q
    log_small = torch.where(lower, log_p, log_q)  # <= log(1/2) up to rounding; no clamp
    z_small = _ndtri_of_log(log_small)
    return torch.where(lower, z_small, -z_small)


def _ndtri_of_log(log_p: torch.Tensor) -> torch.Tensor:
    """Phi^{-1}(exp(log_p)) for log_p <= log(1/2), accurate down to log_p of about -1e300."""
    safe = log_p > _NDTRI_SAFE_LOG
    z_bulk = torch.special.ndtri(log_p.clamp(min=_NDTRI_SAFE_LOG).exp())
    # Far tail: log Phi(z) ~ -z^2/2 - log(-z) - log(2 pi)/2; start there, polish with Newton.
    tail = log_p.clamp(max=_NDTRI_SAFE_LOG)
    t = -2 * tail
    z = -torch.sqrt(t - torch.log(t) - LOG_2PI)
    for _ in range(4):
        log_cdf = log_ndtr(z)
        slope = torch.exp(-0.5 * z.pow(2) - 0.5 * LOG_2PI - log_cdf)  # d log Phi / dz
        z = z - (log_cdf - tail) / slope
    return torch.where(safe, z_bulk, z)


# --------------------------------------------------------------------------------------------------
# Bijections with closed-form inverse and log-determinant
# --------------------------------------------------------------------------------------------------


class Bijection(nn.Module):
    """An invertible map f: R^D -> R^D in the encoder direction (data x -> code z).

    Subclasses define `forward(x) -> z`, `inverse(z) -> x` (the generator g = f^{-1}) and the closed-form
    `log_abs_det_jacobian(x)` = log|det J_f(x)|, each on (n, D) batches.
    """

    def inverse(self, z: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def log_abs_det_jacobian(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def inverse_log_abs_det_jacobian(self, z: torch.Tensor) -> torch.Tensor:
        """log|det J_g(z)| of the generator g = f^{-1} at z (n, D): (n,)."""
        return -self.log_abs_det_jacobian(self.inverse(z))


def _as_batch(x: torch.Tensor, dim: int, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[1] != dim:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected a tensor of shape (n, {dim}), got {shape}")
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}")
    return x.to(torch.float64)


class Affine(Bijection):
    """Generator x = A z + b; encoder f(x) = A^{-1} (x - b).

    Args:
        matrix: (D, D) invertible A.
        shift: (D,) b.
    """

    def __init__(self, matrix: torch.Tensor, shift: torch.Tensor):
        super().__init__()
        matrix = torch.as_tensor(matrix, dtype=torch.float64)
        shift = torch.as_tensor(shift, dtype=torch.float64)
        if (
            matrix.ndim != 2
            or matrix.shape[0] != matrix.shape[1]
            or shift.shape != matrix.shape[:1]
        ):
            raise ValueError(
                f"matrix, shift: expected shapes (D, D) and (D,), got {tuple(matrix.shape)} "
                f"and {tuple(shift.shape)}"
            )
        sign, logabsdet = torch.linalg.slogdet(matrix)
        if sign == 0 or not torch.isfinite(logabsdet):
            raise ValueError("matrix: expected an invertible matrix")
        self.register_buffer("matrix", matrix)
        self.register_buffer("matrix_inv", torch.linalg.inv(matrix))
        self.register_buffer("shift", shift)
        self.generator_logdet = float(logabsdet)
        self.dim = matrix.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(n, D) -> (n, D)."""
        return ((_as_batch(x, self.dim) - self.shift) @ self.matrix_inv.T).to(x.dtype)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """(n, D) -> (n, D)."""
        return (_as_batch(z, self.dim, "z") @ self.matrix.T + self.shift).to(z.dtype)

    def log_abs_det_jacobian(self, x: torch.Tensor) -> torch.Tensor:
        """(n,) the constant -log|det A|."""
        return torch.full(
            (x.shape[0],), -self.generator_logdet, dtype=torch.float64, device=x.device
        )

    def inverse_log_abs_det_jacobian(self, z: torch.Tensor) -> torch.Tensor:
        """(n,) the constant log|det A|."""
        return torch.full(
            (z.shape[0],), self.generator_logdet, dtype=torch.float64, device=z.device
        )


class AffineCoupling(Bijection):
    """A RealNVP-style coupling with fixed, smooth scale and shift functions.

    The coordinates split into a conditioning block a (kept) and a transformed block b. Generator:
        x_a = z_a,   x_b = z_b * exp(s(z_a)) + t(z_a),
    with s(u) = amplitude * tanh(u W_s^T + c_s) and t(u) = curvature * (u W_t^T)^2 + u L^T;
    encoder: z_b = (x_b - t(x_a)) * exp(-s(x_a)). Hence log|det J_g(z)| = sum s(z_a), exactly.

    Args:
        dim: D >= 2.
        transformed: indices of block b (the rest is block a).
        scale_weight, scale_bias, amplitude: W_s (|b|, |a|), c_s (|b|,), amplitude (|b|,).
        shift_weight, curvature, shift_linear: W_t (|b|, |a|), curvature (|b|,), L (|b|, |a|).
    """

    def __init__(
        self,
        dim: int,
        transformed: list[int],
        *,
        scale_weight: torch.Tensor,
        scale_bias: torch.Tensor,
        amplitude: torch.Tensor,
        shift_weight: torch.Tensor,
        curvature: torch.Tensor,
        shift_linear: torch.Tensor,
    ):
        super().__init__()
        if dim < 2 or not transformed or len(set(transformed)) != len(transformed):
            raise ValueError(
                f"transformed: expected distinct indices of a proper block, got {transformed}"
            )
        if not all(0 <= i < dim for i in transformed) or len(transformed) == dim:
            raise ValueError(
                f"transformed: expected a proper subset of range({dim}), got {transformed}"
            )
        kept = [i for i in range(dim) if i not in transformed]
        nb, na = len(transformed), len(kept)
        shapes = {
            "scale_weight": (scale_weight, (nb, na)),
            "scale_bias": (scale_bias, (nb,)),
            "amplitude": (amplitude, (nb,)),
            "shift_weight": (shift_weight, (nb, na)),
            "curvature": (curvature, (nb,)),
            "shift_linear": (shift_linear, (nb, na)),
        }
        for name, (value, shape) in shapes.items():
            value = torch.as_tensor(value, dtype=torch.float64)
            if value.shape != shape:
                raise ValueError(f"{name}: expected shape {shape}, got {tuple(value.shape)}")
            self.register_buffer(name, value)
        self.register_buffer("kept", torch.tensor(kept))
        self.register_buffer("transformed", torch.tensor(transformed))
        self.dim = dim

    @classmethod
    def random(cls, dim: int, transformed: list[int], seed: int = 0, strength: float = 0.5):
        """A coupling with random parameters of size about `strength` (for tests)."""
        g = torch.Generator().manual_seed(seed)
        nb, na = len(transformed), dim - len(transformed)

        def draw(*shape):
            return strength * torch.randn(*shape, generator=g, dtype=torch.float64)

        return cls(
            dim, transformed, scale_weight=draw(nb, na) / strength, scale_bias=draw(nb),
            amplitude=draw(nb), shift_weight=draw(nb, na) / strength, curvature=draw(nb),
            shift_linear=draw(nb, na),
        )  # fmt: skip

    def scale_and_shift(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """s(u), t(u) for the conditioning block u (n, |a|): two (n, |b|) tensors."""
        s = self.amplitude * torch.tanh(u @ self.scale_weight.T + self.scale_bias)
        t = self.curvature * (u @ self.shift_weight.T).pow(2) + u @ self.shift_linear.T
        return s, t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(n, D) -> (n, D)."""
        x64 = _as_batch(x, self.dim)
        s, t = self.scale_and_shift(x64[:, self.kept])
        z_b = (x64[:, self.transformed] - t) * torch.exp(-s)
        return x64.index_copy(1, self.transformed, z_b).to(x.dtype)

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """(n, D) -> (n, D)."""
        z64 = _as_batch(z, self.dim, "z")
        s, t = self.scale_and_shift(z64[:, self.kept])
        x_b = z64[:, self.transformed] * torch.exp(s) + t
        return z64.index_copy(1, self.transformed, x_b).to(z.dtype)

    def log_abs_det_jacobian(self, x: torch.Tensor) -> torch.Tensor:
        """(n,) -sum s(x_a)."""
        s, _ = self.scale_and_shift(_as_batch(x, self.dim)[:, self.kept])
        return -s.sum(1)

    def inverse_log_abs_det_jacobian(self, z: torch.Tensor) -> torch.Tensor:
        """(n,) sum s(z_a) (block a is the same before and after the layer)."""
        s, _ = self.scale_and_shift(_as_batch(z, self.dim, "z")[:, self.kept])
        return s.sum(1)


class Chain(Bijection):
    """The encoder f = f_n o ... o f_1 of bijections given in encoder order (like nn.Sequential).

    The generator runs the inverses in reverse order; log-determinants add along the way.
    """

    def __init__(self, *layers: Bijection):
        super().__init__()
        if not layers or not all(isinstance(layer, Bijection) for layer in layers):
            raise ValueError("layers: expected one or more Bijection modules")
        self.layers = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(n, D) -> (n, D)."""
        for layer in self.layers:
            x = layer(x)
        return x

    def inverse(self, z: torch.Tensor) -> torch.Tensor:
        """(n, D) -> (n, D)."""
        for layer in reversed(self.layers):
            z = layer.inverse(z)
        return z

    def log_abs_det_jacobian(self, x: torch.Tensor) -> torch.Tensor:
        """(n,) sum of the layers' log-determinants along the encoder pass."""
        total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        for layer in self.layers:
            total = total + layer.log_abs_det_jacobian(x)
            x = layer(x)
        return total

    def inverse_log_abs_det_jacobian(self, z: torch.Tensor) -> torch.Tensor:
        """(n,) log|det J_g(z)|, summed along the generator pass (closed form, no encoder call)."""
        total = torch.zeros(z.shape[0], dtype=torch.float64, device=z.device)
        for layer in reversed(self.layers):
            total = total + layer.inverse_log_abs_det_jacobian(z)
            z = layer.inverse(z)
        return total


class NormalCDF(Bijection):
    """u = Phi(z) coordinate-wise: turns N(0, I_D) codes into uniform codes on the cube (0, 1)^D.

    Chained after a Gaussianising map it gives the encoder with a *uniform* embedding law, whose
    log|det J| is log p_X itself. log|det J_Phi(z)| = sum_d log phi(z_d).
    """

    def __init__(self, dim: int):
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim: expected a positive integer, got {dim}")
        self.dim = dim

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(n, D) -> (n, D) in (0, 1)."""
        return torch.special.ndtr(_as_batch(z, self.dim, "z")).to(z.dtype)

    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        """(n, D) in (0, 1) -> (n, D)."""
        return torch.special.ndtri(_as_batch(u, self.dim, "u")).to(u.dtype)

    def log_abs_det_jacobian(self, z: torch.Tensor) -> torch.Tensor:
        """(n,) log N(z; 0, I)."""
        return log_standard_normal(_as_batch(z, self.dim, "z"))


def banana_flow() -> Chain:
    """A fixed 2-D flow: X = g(Z), Z ~ N(0, I_2), bends the Gaussian into a skewed banana.

    Generator, in order: a coupling that bends the second coordinate along a parabola in z1 and
    rescales it by exp(0.5 tanh(z1 - 0.3)); a coupling that shears and rescales the first coordinate as a
    function of the new second one; a rotation by 20 degrees with a stretch. Returned as the encoder
    f = g^{-1} (a `Chain` listing the generator's steps in reverse).
    """
    one = torch.ones(1, 1, dtype=torch.float64)
    bend = AffineCoupling(
        2, [1], scale_weight=one, scale_bias=torch.tensor([-0.3]), amplitude=torch.tensor([0.5]),
        shift_weight=one, curvature=torch.tensor([0.45]), shift_linear=torch.zeros(1, 1),
    )  # fmt: skip
    shear = AffineCoupling(
        2, [0], scale_weight=0.8 * one, scale_bias=torch.tensor([0.5]),
        amplitude=torch.tensor([-0.4]), shift_weight=one, curvature=torch.tensor([0.0]),
        shift_linear=-0.3 * one,
    )  # fmt: skip
    angle = math.radians(20)
    rotation = torch.tensor(
        [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]],
        dtype=torch.float64,
    )
    stretch = torch.diag(torch.tensor([1.2, 0.9], dtype=torch.float64))
    turn = Affine(rotation @ stretch, torch.tensor([0.0, -0.5], dtype=torch.float64))
    return Chain(turn, shear, bend)  # encoder order: undo the generator's last step first


# --------------------------------------------------------------------------------------------------
# The Knothe-Rosenblatt map of a Gaussian mixture
# --------------------------------------------------------------------------------------------------


class RosenblattMap(Bijection):
    """The exact Gaussianising map of a `GaussianMixture`: z_d = Phi^{-1}(F(x_d | x_1, ..., x_{d-1})).

    With the component Cholesky factors L_c (x = m_c + L_c e), the whitened residuals
    e_c = L_c^{-1}(x - m_c) give every conditional in closed form: given x_<d, component c has
    weight r_{c,d} proportional to pi_c N(x_<d; m_c, Sigma_c) = pi_c prod_{j<d} N(e_{c,j}) / L_{c,jj},
    conditional mean x_d - L_{c,dd} e_{c,d} and standard deviation L_{c,dd}. So
        F(x_d | x_<d) = sum_c r_{c,d} Phi(e_{c,d}),   1 - F = sum_c r_{c,d} Phi(-e_{c,d}),
    both accumulated as log-sum-exps of log_ndtr, and the smaller one is inverted (`ndtri_from_logs`).
    J_f is lower triangular with diagonal p(x_d | x_<d) / phi(z_d).

    Args:
        mixture: the law to Gaussianise (any dimension D, any number of components).
    """

    def __init__(self, mixture: GaussianMixture):
        super().__init__()
        if not isinstance(mixture, GaussianMixture):
            raise TypeError(f"mixture: expected a GaussianMixture, got {type(mixture).__name__}")
        self.register_buffer("log_weights", mixture.weights.log())
        self.register_buffer("means", mixture.means.clone())
        self.register_buffer("cholesky", mixture.cholesky.clone())
        eye = torch.eye(mixture.dim, dtype=torch.float64).expand_as(mixture.cholesky)
        inverse = torch.linalg.solve_triangular(mixture.cholesky, eye, upper=False)
        self.register_buffer("cholesky_inv", inverse)  # (C, D, D) lower-triangular L_c^{-1}
        self.register_buffer("log_std", mixture.cholesky.diagonal(dim1=-2, dim2=-1).log())  # (C, D)
        self.dim = mixture.dim

    def conditionals(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-coordinate conditional pieces at x (n, D), in float64.

        Returns:
            e: (n, C, D) whitened residuals e_{c,d}.
            log_r: (n, C, D) log conditional weights log r_{c,d} (normalised over C).
            log_phi: (n, C, D) log of component c's conditional density of x_d given x_<d.
        """
        x64 = _as_batch(x, self.dim)
        diff = x64[:, None, :] - self.means  # (n, C, D)
        e = torch.einsum("ncj,cdj->ncd", diff, self.cholesky_inv)  # L_c^{-1} (x - m_c)
        log_phi = -0.5 * (e.pow(2) + LOG_2PI) - self.log_std
        before = torch.cumsum(log_phi, dim=-1)[..., :-1]
        prefix = torch.cat([torch.zeros_like(log_phi[..., :1]), before], dim=-1)  # sum over j < d
        log_r = torch.log_softmax(self.log_weights[:, None] + prefix, dim=1)
        return e, log_r, log_phi

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(n, D) -> (n, D) codes, exactly N(0, I_D)-distributed when x follows the mixture."""
        e, log_r, _ = self.conditionals(x)
        log_cdf = torch.logsumexp(log_r + log_ndtr(e), dim=1)
        log_sf = torch.logsumexp(log_r + log_ndtr(-e), dim=1)
        return ndtri_from_logs(log_cdf, log_sf).to(x.dtype)

    def log_conditional_densities(self, x: torch.Tensor) -> torch.Tensor:
        """(n, D) log p(x_d | x_<d); their sum over d is log p(x)."""
        _, log_r, log_phi = self.conditionals(x)
        return torch.logsumexp(log_r + log_phi, dim=1)

    def log_abs_det_jacobian(self, x: torch.Tensor) -> torch.Tensor:
        """(n,) sum_d [log p(x_d | x_<d) - log phi(z_d)] (the triangular Jacobian's diagonal)."""
        z = self.forward(x.to(torch.float64))
        return (self.log_conditional_densities(x) + 0.5 * (z.pow(2) + LOG_2PI)).sum(1)

    @torch.no_grad()
    def inverse(self, z: torch.Tensor, *, iterations: int = 80) -> torch.Tensor:
        """(n, D) codes -> (n, D) points, coordinate by coordinate, by bisection on the monotone map.

        For coordinate d the root lies between min_c and max_c of (conditional mean_c + std_c z_d),
        where every component's CDF is below (above) Phi(z_d); 80 halvings reach float64 resolution.
        """
        z64 = _as_batch(z, self.dim, "z")
        x = torch.zeros_like(z64)
        for d in range(self.dim):
            # The leading block of L^{-1} is the inverse of L's leading block (L is triangular).
            diff = x[:, None, :d] - self.means[:, :d]
            e_prev = torch.einsum("ncj,cdj->ncd", diff, self.cholesky_inv[:, :d, :d])  # (n, C, d)
            prefix = (-0.5 * (e_prev.pow(2) + LOG_2PI) - self.log_std[:, :d]).sum(-1)  # (n, C)
            log_r = torch.log_softmax(self.log_weights + prefix, dim=1)
            mean = self.means[:, d] + (e_prev * self.cholesky[:, d, :d]).sum(-1)  # (n, C)
            std = self.cholesky[:, d, d]  # (C,)
            candidates = mean + std * z64[:, d : d + 1]
            lo, hi = candidates.min(1).values, candidates.max(1).values
            for _ in range(iterations):
                mid = 0.5 * (lo + hi)
                e = (mid[:, None] - mean) / std
                log_cdf = torch.logsumexp(log_r + log_ndtr(e), dim=1)
                log_sf = torch.logsumexp(log_r + log_ndtr(-e), dim=1)
                below = ndtri_from_logs(log_cdf, log_sf) < z64[:, d]
                lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
            x[:, d] = 0.5 * (lo + hi)
        return x.to(z.dtype)


def decompose_log_density(mixture: GaussianMixture, x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The change-of-variables pieces at x (n, D) for the mixture's Rosenblatt encoder f, in float64.

    Returns:
        {"log_p": (n,) exact log p_X(x) from `mixture.log_prob`,
         "jepa_score": (n,) JEPA-SCORE(x) of f (autograd Jacobian, `jepa_score`),
         "log_normal": (n,) log N(f(x); 0, I),
         "code": (n, D) f(x)}.
        The identity to check is log_p = jepa_score + log_normal.
    """
    x = _as_batch(x, mixture.dim)
    f = RosenblattMap(mixture)
    parts = change_of_variables(f, x)
    return {"log_p": mixture.log_prob(x), **parts, "code": f(x)}


# --------------------------------------------------------------------------------------------------
# K < D: an encoder that only sees the radius, and laws that share its radial law
# --------------------------------------------------------------------------------------------------


class RadialGaussianizer(nn.Module):
    """f(x) = Phi^{-1}(F_R(||x||)) for x in R^2, with F_R the Rayleigh(scale) CDF 1 - exp(-r^2 / 2 s^2).

    Maps (n, 2) -> (n, 1). Every 2-D law whose radius is Rayleigh(scale), whatever its angles, is pushed
    onto N(0, 1). Its level sets are the circles ||x|| = r, and |grad f(x)| = p_R(r) / phi(f(x)).
    """

    def __init__(self, scale: float = 1.0):
        super().__init__()
        if not scale > 0:
            raise ValueError(f"scale: expected a positive number, got {scale}")
        self.scale = float(scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 2) -> (n, 1)."""
        x64 = _as_batch(x, 2)
        half_sq = x64.pow(2).sum(1) / (2 * self.scale**2)  # r^2 / 2 s^2
        log_sf = -half_sq  # log(1 - F_R), exact
        log_cdf = torch.log(-torch.expm1(-half_sq))
        return ndtri_from_logs(log_cdf, log_sf)[:, None].to(x.dtype)

    def log_gradient_norm(self, x: torch.Tensor) -> torch.Tensor:
        """(n,) closed-form log|grad f(x)| = log p_R(r) - log phi(f(x))."""
        x64 = _as_batch(x, 2)
        r = x64.norm(dim=1)
        log_p_r = torch.log(r) - 2 * math.log(self.scale) - r.pow(2) / (2 * self.scale**2)
        return log_p_r - log_standard_normal(self.forward(x64))

    def level_radius(self, z: torch.Tensor) -> torch.Tensor:
        """Radius r of the level circle f^{-1}(z): F_R(r) = Phi(z), i.e. r = s sqrt(-2 log Phi(-z))."""
        z = torch.as_tensor(z, dtype=torch.float64)
        return self.scale * torch.sqrt(-2 * log_ndtr(-z))


class RadialAngularLaw:
    """A 2-D law with Rayleigh(scale) radius and, independently, angle density (1 + a cos theta) / 2 pi.

    a = 0 is the isotropic Gaussian N(0, scale^2 I_2); every a in (-1, 1) has the same radial law, so
    `RadialGaussianizer(scale)` pushes each of them onto N(0, 1).

    Args:
        scale: the Rayleigh scale s (the per-coordinate std when a = 0).
        modulation: a, with |a| < 1.
    """

    def __init__(self, scale: float = 1.0, modulation: float = 0.0):
        if not scale > 0:
            raise ValueError(f"scale: expected a positive number, got {scale}")
        if not abs(modulation) < 1:
            raise ValueError(f"modulation: expected a number in (-1, 1), got {modulation}")
        self.scale, self.modulation = float(scale), float(modulation)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """(n,) exact log-density at x (n, 2), float64: -log(2 pi s^2) - r^2/2s^2 + log(1 + a cos theta)."""
        x64 = _as_batch(x, 2)
        r = x64.norm(dim=1)
        cos_theta = x64[:, 0] / r
        return (
            -LOG_2PI
            - 2 * math.log(self.scale)
            - r.pow(2) / (2 * self.scale**2)
            + torch.log1p(self.modulation * cos_theta)
        )

    def sample(self, n: int, seed: int | None = None) -> torch.Tensor:
        """(n, 2) float64 samples: Rayleigh radius, angle by rejection from the uniform."""
        g = seeded_generator(seed)
        r = self.scale * torch.sqrt(
            -2 * torch.log1p(-torch.rand(n, generator=g, dtype=torch.float64))
        )
        angles = torch.empty(0, dtype=torch.float64)
        while angles.numel() < n:
            theta = 2 * math.pi * torch.rand(2 * n, generator=g, dtype=torch.float64)
            accept = torch.rand(2 * n, generator=g, dtype=torch.float64) * (
                1 + abs(self.modulation)
            )
            angles = torch.cat([angles, theta[accept < 1 + self.modulation * torch.cos(theta)]])
        theta = angles[:n]
        return torch.stack([r * torch.cos(theta), r * torch.sin(theta)], 1)


def circle_coarea_integral(
    log_prob: Callable[[torch.Tensor], torch.Tensor],
    encoder: nn.Module,
    radius: torch.Tensor,
    n_points: int = 256,
) -> torch.Tensor:
    """The coarea integral over circles centred at 0: int p_X(x) / |grad f(x)| dH^1(x).

    |grad f(x)| = exp(JEPA-SCORE(x)) for a K = 1 encoder (its one singular value), computed with
    `jepa_score` in float64; the periodic trapezoid rule in the angle converges exponentially fast.

    Args:
        log_prob: maps (m, 2) float64 points to (m,) log-densities.
        encoder: maps (m, 2) -> (m, 1); on each circle it should be constant (a level set).
        radius: (R,) circle radii.
        n_points: quadrature nodes per circle.

    Returns:
        (R,) float64 integrals, to compare with the density of f(X) at the circles' levels.
    """
    radius = torch.as_tensor(radius, dtype=torch.float64).reshape(-1)
    theta = torch.arange(n_points, dtype=torch.float64) * (2 * math.pi / n_points)
    circle = torch.stack([torch.cos(theta), torch.sin(theta)], 1)  # (P, 2)
    x = (radius[:, None, None] * circle).reshape(-1, 2)
    log_integrand = log_prob(x) - jepa_score(encoder, x)
    integrand = log_integrand.exp().reshape(len(radius), n_points)
    return integrand.mean(1) * 2 * math.pi * radius


# --------------------------------------------------------------------------------------------------
# A regular grid warped by a 2-D map (Figure 2, top left)
# --------------------------------------------------------------------------------------------------


@dataclass
class WarpedGrid:
    """Cells of a regular 2-D grid and their images under a map.

    Attributes:
        cells: (M, P, 2) each cell's boundary, P points counter-clockwise, in input space.
        images: (M, P, 2) the same boundaries after the map.
        centres: (M, 2) cell centres in input space.
        log_expansion: (M,) log(area of image / area of cell), by the shoelace formula.
        cell_size: (2,) width and height of every cell.
    """

    cells: torch.Tensor
    images: torch.Tensor
    centres: torch.Tensor
    log_expansion: torch.Tensor
    cell_size: torch.Tensor

    def log_mean_expansion(self, encoder: nn.Module, n_sub: int = 6) -> torch.Tensor:
        """(M,) log of the cell average of |det J| = exp(JEPA-SCORE), midpoint rule on n_sub^2 nodes.

        By the change of variables, area(f(cell)) = integral over the cell of |det J_f|, so this is the
        same quantity as `log_expansion` measured a second way (through `jepa_score`).
        """
        offsets = (torch.arange(n_sub, dtype=torch.float64) + 0.5) / n_sub
        sub = torch.stack(torch.meshgrid(offsets, offsets, indexing="ij"), -1).reshape(-1, 2)
        corners = self.centres - self.cell_size / 2
        nodes = (corners[:, None, :] + sub[None] * self.cell_size).reshape(-1, 2)
        scores = jepa_score(encoder, nodes).reshape(len(corners), -1)
        return torch.logsumexp(scores, dim=1) - math.log(n_sub * n_sub)


def polygon_area(points: torch.Tensor) -> torch.Tensor:
    """Signed shoelace area of closed polygons (M, P, 2) listed counter-clockwise: (M,)."""
    x, y = points[..., 0], points[..., 1]
    return 0.5 * (x * y.roll(-1, -1) - x.roll(-1, -1) * y).sum(-1)


def warp_grid(
    encoder: Callable[[torch.Tensor], torch.Tensor],
    x_range: tuple[float, float],
    y_range: tuple[float, float],
    n_cells: int,
    n_edge: int = 8,
) -> WarpedGrid:
    """Split [x0, x1] x [y0, y1] into n_cells^2 squares, map their boundaries (n_edge points per side).

    Args:
        encoder: a 2-D map, (m, 2) -> (m, 2) (e.g. a `RosenblattMap`).
        x_range, y_range: the box in input space.
        n_cells: cells per side.
        n_edge: boundary points per side of a cell (curved images need a few).

    Returns:
        A `WarpedGrid` with M = n_cells^2 cells, in float64.
    """
    xs = torch.linspace(*x_range, n_cells + 1, dtype=torch.float64)
    ys = torch.linspace(*y_range, n_cells + 1, dtype=torch.float64)
    s = torch.arange(n_edge, dtype=torch.float64) / n_edge
    one, zero = torch.ones_like(s), torch.zeros_like(s)
    # Unit square boundary, counter-clockwise: bottom, right, top, left.
    unit = torch.cat(
        [torch.stack(p, 1) for p in ((s, zero), (one, s), (1 - s, one), (zero, 1 - s))]
    )  # (4 n_edge, 2)
    x0, y0 = torch.meshgrid(xs[:-1], ys[:-1], indexing="ij")
    origin = torch.stack([x0.flatten(), y0.flatten()], 1)  # (M, 2)
    size = torch.tensor([xs[1] - xs[0], ys[1] - ys[0]], dtype=torch.float64)
    cells = origin[:, None, :] + unit[None] * size  # (M, P, 2)
    with torch.no_grad():
        images = encoder(cells.reshape(-1, 2)).reshape(cells.shape).to(torch.float64)
    log_expansion = torch.log(polygon_area(images).abs()) - torch.log(size.prod())
    return WarpedGrid(cells, images, origin + size / 2, log_expansion, size)


# --------------------------------------------------------------------------------------------------
# Checks of a 2-D density: quadrature on a grid, histogram of samples
# --------------------------------------------------------------------------------------------------


@dataclass
class Grid:
    """A cell-centred regular grid over a box in R^2 (midpoint rule).

    Attributes:
        xs: (n_x,) and ys: (n_y,) cell centres along each axis.
        points: (n_x * n_y, 2) all cell centres, x-major (reshape values to (n_x, n_y)).
        cell_area: area of one cell.
    """

    xs: torch.Tensor
    ys: torch.Tensor
    points: torch.Tensor
    cell_area: float

    def integrate(self, values: torch.Tensor) -> float:
        """Midpoint-rule integral of (n_x * n_y,) values over the box."""
        return float(values.sum()) * self.cell_area


def regular_grid(x_range: tuple[float, float], y_range: tuple[float, float], n: int) -> Grid:
    """An n x n cell-centred grid over [x0, x1] x [y0, y1], float64."""
    hx, hy = (x_range[1] - x_range[0]) / n, (y_range[1] - y_range[0]) / n
    xs = x_range[0] + hx * (torch.arange(n, dtype=torch.float64) + 0.5)
    ys = y_range[0] + hy * (torch.arange(n, dtype=torch.float64) + 0.5)
    xx, yy = torch.meshgrid(xs, ys, indexing="ij")
    return Grid(xs, ys, torch.stack([xx.flatten(), yy.flatten()], 1), hx * hy)


def histogram_chi_square(
    samples: torch.Tensor,
    log_density: Callable[[torch.Tensor], torch.Tensor],
    x_range: tuple[float, float],
    y_range: tuple[float, float],
    bins: int = 20,
    n_sub: int = 8,
    min_expected: float = 5.0,
) -> dict[str, float]:
    """Pearson chi-square test of a 2-D histogram of samples against a density, inside a box.

    Bin probabilities come from the density by the midpoint rule (n_sub^2 nodes per bin), renormalised
    over the box, so only the density's *shape* is tested; bins expecting fewer than `min_expected`
    samples are pooled into one.

    Args:
        samples: (n, 2) draws; those outside the box are ignored.
        log_density: maps (m, 2) float64 points to (m,) log-densities (normalised or not).
        x_range, y_range: the box; bins: bins per side.

    Returns:
        {"statistic", "dof", "p_value", "total_variation"} (total variation between the histogram's and
        the density's bin probabilities).
    """
    from scipy import stats

    fine = regular_grid(x_range, y_range, bins * n_sub)
    density = log_density(fine.points).exp().reshape(bins, n_sub, bins, n_sub)
    probs = density.sum((1, 3)).flatten()
    probs = probs / probs.sum()
    counts, _, _ = np.histogram2d(
        samples[:, 0].double().cpu().numpy(), samples[:, 1].double().cpu().numpy(),
        bins=bins, range=[x_range, y_range],
    )  # fmt: skip
    counts = torch.from_numpy(counts).flatten()
    expected = counts.sum() * probs
    small = expected < min_expected
    observed, expected = counts[~small], expected[~small]
    if small.any():  # pool the sparse bins into one
        observed = torch.cat([observed, counts[small].sum()[None]])
        expected = torch.cat([expected, (counts.sum() * probs[small]).sum()[None]])
    statistic = float(((observed - expected).pow(2) / expected.clamp_min(1e-300)).sum())
    dof = len(observed) - 1
    return {
        "statistic": statistic,
        "dof": dof,
        "p_value": float(stats.chi2.sf(statistic, dof)),
        "total_variation": 0.5 * float((counts / counts.sum() - probs).abs().sum()),
    }


# --------------------------------------------------------------------------------------------------
# A trainable coupling flow (an encoder family with an exact, cheap log-determinant)
# --------------------------------------------------------------------------------------------------


class _LearnedCoupling(nn.Module):
    """One trainable affine coupling: z_b = x_b * exp(s(x_a)) + t(x_a), x_a kept.

    s = bound * tanh(raw / bound) keeps each log-scale within (-bound, bound); the last layer of the
    conditioner starts at zero, so the layer starts as the identity.
    """

    def __init__(self, dim: int, transformed: list[int], hidden: int, depth: int, bound: float):
        super().__init__()
        kept = [i for i in range(dim) if i not in transformed]
        self.register_buffer("kept", torch.tensor(kept))
        self.register_buffer("transformed", torch.tensor(transformed))
        layers: list[nn.Module] = []
        width = len(kept)
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.GELU()]
            width = hidden
        layers.append(nn.Linear(width, 2 * len(transformed)))
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
        self.net = nn.Sequential(*layers)
        self.bound = bound

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, D) -> ((n, D) output, (n,) log|det J| of this layer)."""
        raw_s, t = self.net(x[:, self.kept]).chunk(2, dim=1)
        s = self.bound * torch.tanh(raw_s / self.bound)
        z_b = x[:, self.transformed] * torch.exp(s) + t
        return x.index_copy(1, self.transformed, z_b), s.sum(1)


class CouplingFlow(nn.Module):
    """A trainable RealNVP-style encoder (B, D) -> (B, D): fixed whitening, then `n_layers` affine
    couplings that alternate which half of the coordinates they transform (D = 1 is not supported).

    It starts as the whitening map (every coupling starts as the identity), is a bijection for any
    weights, and its log|det J_f(x)| is exact and cheap (`log_abs_det_jacobian`), which is
    JEPA-SCORE for K = D. The same module serves Gaussian-embedding training (SIGReg on f(X)) and
    maximum-likelihood training (`gmm_recipes.train_ml_flow`).

    Args:
        mean: (D,) data mean m; whitening: (D, D) W (u = W (x - m)).
        n_layers: couplings; hidden, depth: of each conditioner MLP; bound: the largest |log-scale|.
    """

    def __init__(
        self,
        mean: torch.Tensor,
        whitening: torch.Tensor,
        *,
        n_layers: int = 8,
        hidden: int = 64,
        depth: int = 2,
        bound: float = 3.0,
    ):
        super().__init__()
        dim = mean.shape[0]
        if dim < 2:
            raise ValueError(f"mean: expected D >= 2, got D = {dim}")
        self.register_buffer("mean", mean.detach().clone().float())
        self.register_buffer("whitening", whitening.detach().clone().float())
        generator = torch.Generator().manual_seed(dim)
        couplings = []
        for layer in range(n_layers):
            order = torch.randperm(dim, generator=generator) if dim > 2 else torch.arange(dim)
            half = order[: dim // 2] if layer % 2 == 0 else order[dim // 2 :]
            couplings.append(_LearnedCoupling(dim, sorted(half.tolist()), hidden, depth, bound))
        self.couplings = nn.ModuleList(couplings)
        self.dim = dim

    def forward_and_log_det(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(n, D) -> ((n, D) embeddings f(x), (n,) log|det J_f(x)|), in x's dtype."""
        whitening = self.whitening.to(x.dtype)
        z = (x - self.mean.to(x.dtype)) @ whitening.T
        total = torch.linalg.slogdet(whitening)[1].expand(x.shape[0]).clone()
        for coupling in self.couplings:
            z, log_det = coupling(z)
            total = total + log_det
        return z, total

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(n, D) -> (n, D)."""
        return self.forward_and_log_det(x)[0]

    def log_abs_det_jacobian(self, x: torch.Tensor) -> torch.Tensor:
        """(n,) log|det J_f(x)| (exact)."""
        return self.forward_and_log_det(x)[1]
