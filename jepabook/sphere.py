"""Lemma 1: a standard Gaussian in R^K is a uniform direction times an independent chi_K radius.

For Z ~ N(0, I_K): ||Z||^2 ~ chi^2_K, U = Z/||Z|| is uniform on the sphere S^{K-1}, and U is
independent of ||Z||. This module holds the exact laws (through `gammaln`, stable for K up to 1e6
and beyond), a memory-bounded sampler that keeps only norms and a few projections, two controls
that break the lemma on purpose, and the tests that tell them apart.

    norms, proj = norms_and_projections("gaussian", n=4000, k=512, seed=0)
    uniformity_test(proj, 512).combined_p     # KS on each projection, Bonferroni-combined
    independence_test(norms, proj).combined_p  # rank correlation of ||X|| with <v, U>^2
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import special, stats

LAWS = ("gaussian", "anisotropic", "coupled")
"""The samplers: the lemma's N(0, I_K), and two controls (see `norms_and_projections`)."""


def _check_k(k: int) -> int:
    if int(k) != k or k < 2:
        raise ValueError(f"k: expected an integer dimension >= 2, got {k!r}")
    return int(k)


# ---------------------------------------------------------------------------------------------
# Exact laws
# ---------------------------------------------------------------------------------------------


def log_mean_chi(k: int | np.ndarray) -> np.ndarray:
    """log E[chi_K] = 1/2 log 2 + gammaln((K+1)/2) - gammaln(K/2), float64, elementwise in k."""
    k = np.asarray(k, dtype=np.float64)
    return 0.5 * np.log(2.0) + special.gammaln((k + 1) / 2) - special.gammaln(k / 2)


def mean_scaled_norm(k: int | np.ndarray) -> np.ndarray:
    """Exact E[||Z||/sqrt(K)] for Z ~ N(0, I_K): sqrt(2/K) Gamma((K+1)/2) / Gamma(K/2)."""
    k = np.asarray(k, dtype=np.float64)
    return np.exp(log_mean_chi(k) - 0.5 * np.log(k))


def std_scaled_norm(k: int | np.ndarray) -> np.ndarray:
    """Exact std of ||Z||/sqrt(K): sqrt(1 - m_K^2) with m_K = `mean_scaled_norm(K)`.

    E[||Z||^2]/K = 1, so Var = 1 - m_K^2, written as -expm1(2 log m_K) to avoid cancellation
    (at K = 65536 the variance is 7.6e-6). Tends to 1/sqrt(2K) as sqrt(1 - 1/(4K) + O(K^-2)).
    """
    k = np.asarray(k, dtype=np.float64)
    return np.sqrt(-np.expm1(2 * (log_mean_chi(k) - 0.5 * np.log(k))))


def asymptotic_std(k: int | np.ndarray) -> np.ndarray:
    """The large-K spread 1/sqrt(2K) of ||Z||/sqrt(K)."""
    return 1.0 / np.sqrt(2.0 * np.asarray(k, dtype=np.float64))


def excess_kurtosis_scaled_norm(k: int) -> float:
    """Excess kurtosis of chi_K (scale-free), from scipy; 0.245 at K = 2, ~1/(4K)... -> 0."""
    return float(stats.chi(_check_k(k)).stats(moments="k"))


def scaled_norm_density(x: np.ndarray, k: int) -> np.ndarray:
    """Density of ||Z||/sqrt(K) at x (any shape): sqrt(K) chi_K.pdf(sqrt(K) x), via logpdf."""
    k = _check_k(k)
    return np.exp(stats.chi(k).logpdf(np.sqrt(k) * np.asarray(x, dtype=np.float64)) + 0.5 * np.log(k))


def projection_law(k: int) -> stats.rv_continuous:
    """Law of <v, U> for U uniform on S^{K-1} and a fixed unit v: (1+t)/2 ~ Beta((K-1)/2, (K-1)/2).

    K = 2 gives the arcsine law, K = 3 the uniform law on [-1, 1] (Archimedes), and sqrt(K) t tends
    to N(0, 1) as K grows.
    """
    a = (_check_k(k) - 1) / 2
    return stats.beta(a, a, loc=-1.0, scale=2.0)


def projection_log_density(t: np.ndarray, k: int) -> np.ndarray:
    """log density of <v, U> at t in (-1, 1), written out with gammaln (float64, shape of t):

    log Gamma(K/2) - 1/2 log pi - log Gamma((K-1)/2) + (K-3)/2 log(1 - t^2); -inf outside [-1, 1].
    """
    k = _check_k(k)
    t = np.asarray(t, dtype=np.float64)
    const = special.gammaln(k / 2) - 0.5 * np.log(np.pi) - special.gammaln((k - 1) / 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        inside = const + (k - 3) / 2 * np.log1p(-(t**2))
    return np.where(np.abs(t) < 1, inside, -np.inf)


def log_gaussian_density_std(k: int) -> float:
    """Exact std over Z ~ N(0, I_K) of log N(Z; 0, I_K) = -K/2 log 2 pi - ||Z||^2/2: sqrt(K/2)."""
    return float(np.sqrt(_check_k(k) / 2))


# ---------------------------------------------------------------------------------------------
# Sampling (memory-bounded: only norms and a few projections are kept)
# ---------------------------------------------------------------------------------------------


def _generator(seed: int, *keys: int, device: torch.device) -> torch.Generator:
    state = np.random.SeedSequence([int(seed), *keys]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator(device=device).manual_seed(int(state) & (2**63 - 1))


def random_directions(k: int, m: int, *, seed: int = 0) -> torch.Tensor:
    """m unit vectors in R^K, float64 on CPU, shape (K, m): normalised Gaussian columns.

    They depend on (seed, K, m) only, so every law is projected on the same directions.
    """
    k = _check_k(k)
    g = _generator(seed, k, m, 7919, device=torch.device("cpu"))
    v = torch.randn(k, m, generator=g, dtype=torch.float64)
    return v / torch.linalg.vector_norm(v, dim=0, keepdim=True)


def power_law_variances(k: int, alpha: float) -> torch.Tensor:
    """Per-coordinate variances s_i = i^(-alpha), i = 1..K, float64, shape (K,)."""
    return torch.arange(1, _check_k(k) + 1, dtype=torch.float64) ** (-float(alpha))


def _chunk(law: str, n: int, k: int, g: torch.Generator, alpha: float, dev: torch.device):
    """(norms (n,), directions (n, K)) for one chunk of `law`; float32 on `dev`."""
    z = torch.randn(n, k, generator=g, device=dev)
    if law == "gaussian":
        norms = torch.linalg.vector_norm(z, dim=1)
        return norms, z / norms[:, None]
    scale = power_law_variances(k, alpha).to(dev, torch.float32).sqrt()
    if law == "anisotropic":
        x = z * scale
        norms = torch.linalg.vector_norm(x, dim=1)
        return norms, x / norms[:, None]
    # "coupled": radius exactly chi_K; the direction's anisotropy exponent grows with the radius.
    norms = torch.linalg.vector_norm(z, dim=1)
    q = torch.from_numpy(stats.chi(k).cdf(norms.double().cpu().numpy())).to(dev, torch.float32)
    w = torch.randn(n, k, generator=g, device=dev) * scale[None, :] ** q[:, None]
    return norms, w / torch.linalg.vector_norm(w, dim=1, keepdim=True)


def norms_and_projections(
    law: str,
    n: int,
    k: int,
    *,
    n_directions: int = 8,
    seed: int = 0,
    alpha: float = 2.0,
    device: str | torch.device = "cpu",
    chunk_floats: int = 2**23,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw n samples X in R^K from `law`; return ||X|| (n,) and <v_j, X/||X||> (n, m), float64.

    Laws:
    - "gaussian": X ~ N(0, I_K), the lemma's law.
    - "anisotropic": X ~ N(0, diag(s)), s_i = i^(-alpha): not rotation invariant, so X/||X|| is not
      uniform (and its direction is not independent of its norm either).
    - "coupled": ||X|| ~ chi_K exactly, but the direction is normalised N(0, diag(s^q)) with
      q = F_chi_K(||X||) in (0, 1): the direction depends on the norm by construction.

    The v_j are `random_directions(k, n_directions, seed=seed)`. Samples are drawn in chunks of at
    most `chunk_floats` floats (float32), so memory stays bounded for any K; results depend on
    (law, n, k, seed, chunk_floats), not on the device's other work.
    """
    if law not in LAWS:
        raise ValueError(f"law: expected one of {LAWS}, got {law!r}")
    k = _check_k(k)
    if n < 1:
        raise ValueError(f"n: expected a positive number of samples, got {n!r}")
    dev = torch.device(device)
    g = _generator(seed, k, LAWS.index(law), device=dev)
    v = random_directions(k, n_directions, seed=seed).to(dev, torch.float32)
    rows = max(1, chunk_floats // k)
    norms, projections = [], []
    for start in range(0, n, rows):
        r, u = _chunk(law, min(rows, n - start), k, g, alpha, dev)
        norms.append(r.double().cpu())
        projections.append((u @ v).double().cpu())
    proj = torch.cat(projections).numpy()
    return torch.cat(norms).numpy(), np.clip(proj, -1.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------


@dataclass
class NormSummary:
    """Empirical mean/std of ||X||/sqrt(K) against the exact chi_K values, with standard errors."""

    k: int
    n: int
    mean: float
    std: float
    exact_mean: float
    exact_std: float
    asymptotic_std: float
    se_mean: float
    se_std: float

    @property
    def z_mean(self) -> float:
        """(empirical - exact mean) in standard errors."""
        return (self.mean - self.exact_mean) / self.se_mean

    @property
    def z_std(self) -> float:
        """(empirical - exact std) in standard errors."""
        return (self.std - self.exact_std) / self.se_std


def summarize_norms(norms: np.ndarray, k: int) -> NormSummary:
    """Compare norms (n,) of samples in R^K with chi_K: mean and std of norms/sqrt(K).

    Standard errors: se(mean) = sigma/sqrt(n); se(std) = sigma sqrt((2 + kappa)/(4n)) with kappa
    the exact excess kurtosis of chi_K (delta method for the sample std).
    """
    k = _check_k(k)
    x = np.asarray(norms, dtype=np.float64) / np.sqrt(k)
    n = x.size
    sigma = float(std_scaled_norm(k))
    kappa = excess_kurtosis_scaled_norm(k)
    return NormSummary(
        k=k,
        n=n,
        mean=float(x.mean()),
        std=float(x.std(ddof=1)),
        exact_mean=float(mean_scaled_norm(k)),
        exact_std=sigma,
        asymptotic_std=float(asymptotic_std(k)),
        se_mean=sigma / np.sqrt(n),
        se_std=sigma * np.sqrt((2 + kappa) / (4 * n)),
    )


@dataclass
class DirectionTest:
    """Per-direction p-values (m,) and statistics (m,), and their Bonferroni combination."""

    statistics: np.ndarray
    p_values: np.ndarray

    @property
    def combined_p(self) -> float:
        """min(1, m * min_j p_j): a valid p-value however the m tests depend on each other."""
        return float(min(1.0, self.p_values.size * self.p_values.min()))


def uniformity_test(projections: np.ndarray, k: int) -> DirectionTest:
    """KS test of each column of `projections` (n, m) against `projection_law(k)`.

    Under Lemma 1 every column is distributed as <v, U> with U uniform on S^{K-1}.
    """
    law = projection_law(k)
    proj = np.atleast_2d(np.asarray(projections, dtype=np.float64).T).T
    results = [stats.kstest(proj[:, j], law.cdf) for j in range(proj.shape[1])]
    return DirectionTest(
        statistics=np.array([r.statistic for r in results]),
        p_values=np.array([r.pvalue for r in results]),
    )


def independence_test(norms: np.ndarray, projections: np.ndarray) -> DirectionTest:
    """Spearman rank correlation of ||X|| (n,) with <v_j, U>^2 for each column j of (n, m).

    Under Lemma 1 each correlation is 0 (rho ~ N(0, 1/n)); its p-value is scipy's (t approx.).
    """
    norms = np.asarray(norms, dtype=np.float64)
    proj = np.atleast_2d(np.asarray(projections, dtype=np.float64).T).T
    if proj.shape[0] != norms.shape[0]:
        raise ValueError(
            f"projections: expected {norms.shape[0]} rows (one per norm), got {proj.shape[0]}"
        )
    results = [stats.spearmanr(norms, proj[:, j] ** 2) for j in range(proj.shape[1])]
    return DirectionTest(
        statistics=np.array([r.statistic for r in results]),
        p_values=np.array([r.pvalue for r in results]),
    )
