"""Lemma 1: a standard Gaussian in R^K is a uniform direction times an independent chi_K radius.

For Z ~ N(0, I_K): ||Z||^2 ~ chi^2_K, U = Z/||Z|| is uniform on the sphere S^{K-1}, and U is
independent of ||Z||. This module holds the exact laws (through `gammaln`, stable for K up to 1e6
and beyond), a memory-bounded sampler that keeps only norms and a few projections, two controls
that break the lemma on purpose, and the tests that tell them apart.

Size: over 500 lines because the chapter's figures (about 150 lines of plotting) live here, beside
the laws, the sampler and the tests they draw, so that the notebook stays prose and short calls.

    norms, proj = norms_and_projections("gaussian", n=4000, k=512, seed=0)
    uniformity_test(proj, 512).combined_p     # KS on each projection, Bonferroni-combined
    independence_test(norms, proj).combined_p  # rank correlation of ||X|| with <v, U>^2
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import seaborn as sns
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


SERIES_FROM_K = 64
"""From this K on, log E[||Z||/sqrt(K)] uses its asymptotic series (gammaln differences cancel)."""


def log_mean_scaled_norm(k: int | np.ndarray) -> np.ndarray:
    """log m_K with m_K = E[||Z||/sqrt(K)] = sqrt(2/K) Gamma((K+1)/2) / Gamma(K/2); float64.

    Below K = 64: gammaln directly. From K = 64 on, the Bernoulli-polynomial series of
    log Gamma(x + 1/2) - log Gamma(x) at x = K/2, which after the sqrt(2/K) cancels exactly leaves
    log m_K = -1/(4K) + 1/(24K^3) - 1/(20K^5) + 17/(112K^7) + O(K^-9)
    with no cancellation (gammaln's differences lose ~1e-11 absolute near K = 1e5, which is
    ~1e-6 of the variance 1 - m_K^2 there).
    """
    k = np.asarray(k, dtype=np.float64)
    direct = 0.5 * np.log(2.0 / k) + special.gammaln((k + 1) / 2) - special.gammaln(k / 2)
    series = -1 / (4 * k) + 1 / (24 * k**3) - 1 / (20 * k**5) + 17 / (112 * k**7)
    return np.where(k >= SERIES_FROM_K, series, direct)


def mean_scaled_norm(k: int | np.ndarray) -> np.ndarray:
    """Exact E[||Z||/sqrt(K)] for Z ~ N(0, I_K): sqrt(2/K) Gamma((K+1)/2) / Gamma(K/2)."""
    return np.exp(log_mean_scaled_norm(k))


def std_scaled_norm(k: int | np.ndarray) -> np.ndarray:
    """Exact std of ||Z||/sqrt(K): sqrt(1 - m_K^2) with m_K = `mean_scaled_norm(K)`.

    E[||Z||^2]/K = 1, so Var = 1 - m_K^2, written as -expm1(2 log m_K) to avoid cancellation
    (at K = 65536 the variance is 7.6e-6). Tends to 1/sqrt(2K) as sqrt(1 - 1/(4K) + O(K^-2)).
    """
    return np.sqrt(-np.expm1(2 * log_mean_scaled_norm(k)))


def asymptotic_std(k: int | np.ndarray) -> np.ndarray:
    """The large-K spread 1/sqrt(2K) of ||Z||/sqrt(K)."""
    return 1.0 / np.sqrt(2.0 * np.asarray(k, dtype=np.float64))


def excess_kurtosis_scaled_norm(k: int | np.ndarray) -> np.ndarray:
    """Exact excess kurtosis of chi_K (scale-free): 0.245 at K = 2, ~0.75/K^2 for large K.

    From the raw moments E R^2 = K, E R^3 = (K+1) E R, E R^4 = K(K+2) and w = 2K Var(R/sqrt(K))
    (-> 1): kurtosis = 8K(w - 1)/w^2 + 8/w - 3, in which nothing of order K cancels except w - 1,
    which is known to ~1e-16 absolute (scipy's chi.stats loses every digit from K ~ 1e3); the
    result is good to ~1e-15 K absolute.
    """
    k = np.asarray(k, dtype=np.float64)
    w = -2 * k * np.expm1(2 * log_mean_scaled_norm(k))
    return 8 * k * (w - 1) / w**2 + 8 / w - 6


def scaled_norm_density(x: np.ndarray, k: int) -> np.ndarray:
    """Density of ||Z||/sqrt(K) at x (any shape): sqrt(K) chi_K.pdf(sqrt(K) x), via logpdf."""
    k = _check_k(k)
    return np.exp(
        stats.chi(k).logpdf(np.sqrt(k) * np.asarray(x, dtype=np.float64)) + 0.5 * np.log(k)
    )


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


def fixed_directions(k: int, m: int, *, seed: int = 0) -> torch.Tensor:
    """m unit vectors in R^K, float64 on CPU, shape (K, m): normalised Gaussian columns.

    They depend on (seed, K, m) only, so every law is projected on the same directions.
    """
    k = _check_k(k)
    g = _generator(seed, k, m, 7919, device=torch.device("cpu"))
    v = torch.randn(k, m, generator=g, dtype=torch.float64)
    return v / torch.linalg.vector_norm(v, dim=0, keepdim=True)


def power_law_variances(k: int, alpha: float) -> torch.Tensor:
    """Per-coordinate variances s_i proportional to i^(-alpha), i = 1..K, with mean 1 (so the trace
    is K, as for I_K); float64, shape (K,)."""
    s = torch.arange(1, _check_k(k) + 1, dtype=torch.float64) ** (-float(alpha))
    return s / s.mean()


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
    - "anisotropic": X ~ N(0, diag(s)), s_i ∝ i^(-alpha) with mean 1 (E||X||^2 = K as for the
      lemma): not rotation invariant, so X/||X|| is not uniform (nor independent of ||X||).
    - "coupled": ||X|| ~ chi_K exactly, but the direction is normalised N(0, diag(s^q)) with
      q = F_chi_K(||X||) in (0, 1): the direction depends on the norm by construction.

    The v_j are `fixed_directions(k, n_directions, seed=seed)`. Samples are drawn in chunks of at
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
    v = fixed_directions(k, n_directions, seed=seed).to(dev, torch.float32)
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
    kappa = float(excess_kurtosis_scaled_norm(k))
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


# ---------------------------------------------------------------------------------------------
# The chapter's experiment: every law at every K
# ---------------------------------------------------------------------------------------------


@dataclass
class LawCheck:
    """One law at one K: the samples kept (norms (n,), projections (n, m)) and the three checks."""

    law: str
    k: int
    norms: np.ndarray
    projections: np.ndarray
    radius: NormSummary
    uniformity: DirectionTest
    independence: DirectionTest


def check_law(law: str, n: int, k: int, **kwargs) -> LawCheck:
    """Sample `law` (see `norms_and_projections`, which takes the keyword arguments) and test it."""
    norms, projections = norms_and_projections(law, n, k, **kwargs)
    return LawCheck(
        law=law,
        k=k,
        norms=norms,
        projections=projections,
        radius=summarize_norms(norms, k),
        uniformity=uniformity_test(projections, k),
        independence=independence_test(norms, projections),
    )


def check_all(
    ks: list[int], n: int, *, laws: tuple[str, ...] = LAWS, progress: bool = True, **kwargs
) -> dict[tuple[str, int], LawCheck]:
    """`check_law` for every (law, K); keyword arguments go to `norms_and_projections`."""
    from tqdm import tqdm

    pairs = [(law, k) for k in ks for law in laws]
    return {
        (law, k): check_law(law, n, k, **kwargs)
        for law, k in tqdm(pairs, desc="laws x K", disable=not progress)
    }


def radius_rows(checks: dict[tuple[str, int], LawCheck], law: str = "gaussian") -> list[dict]:
    """One row per K for `law`: mean/std of ||X||/sqrt(K) against chi_K; log-density spread.

    "logN std" is the std over samples of log N(X; 0, I_K) = const - ||X||^2/2 (exact: sqrt(K/2));
    its z-score uses se = sqrt(K/2) sqrt((2 + 12/K)/(4n)) (12/K: excess kurtosis of chi^2_K), and
    "logN std/|E logN|" is the exact spread relative to the mean, K/2 (1 + log 2 pi).
    """
    rows = []
    for (name, k), c in checks.items():
        if name != law:
            continue
        r = c.radius
        log_n_std = float(np.std(c.norms**2 / 2, ddof=1))
        exact = log_gaussian_density_std(k)
        rows.append(
            {
                "K": k,
                "mean": r.mean,
                "exact mean": r.exact_mean,
                "z mean": r.z_mean,
                "std": r.std,
                "exact std": r.exact_std,
                "1/sqrt(2K)": r.asymptotic_std,
                "z std": r.z_std,
                "std/asymptote": r.std / r.asymptotic_std,
                "exact/asymptote": r.exact_std / r.asymptotic_std,
                "logN std": log_n_std,
                "exact logN std": exact,
                "z logN std": (log_n_std - exact) / (exact * np.sqrt((2 + 12 / k) / (4 * r.n))),
                "logN std/|E logN|": exact / (k / 2 * (1 + np.log(2 * np.pi))),
            }
        )
    return rows


def direction_rows(checks: dict[tuple[str, int], LawCheck]) -> list[dict]:
    """One row per K: Bonferroni-combined p-values of both direction tests for every law."""
    rows: dict[int, dict] = {}
    for (law, k), c in checks.items():
        row = rows.setdefault(k, {"K": k})
        row[f"uniform p ({law})"] = c.uniformity.combined_p
        row[f"independent p ({law})"] = c.independence.combined_p
    return list(rows.values())


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------

LAW_LABELS = {
    "gaussian": r"$N(0, I_K)$",
    "anisotropic": r"control: $N(0, \mathrm{diag}(i^{-\alpha}))$",
    "coupled": "control: direction coupled to norm",
}


def _ks(checks: dict[tuple[str, int], LawCheck], law: str) -> list[int]:
    return sorted(k for name, k in checks if name == law)


def plot_radius_densities(ax, checks: dict[tuple[str, int], LawCheck], ks: list[int]) -> None:
    """Histograms of ||Z||/sqrt(K) for the Gaussian at several K, with the exact chi_K densities."""
    colors = iter(sns.color_palette("rocket_r", len(ks)))
    for k in ks:
        color = next(colors)
        x = checks["gaussian", k].norms / np.sqrt(k)
        ax.hist(x, bins=60, density=True, histtype="stepfilled", alpha=0.3, color=color)
        grid = np.linspace(max(0.0, x.min() - 0.05), x.max() + 0.05, 400)
        ax.plot(grid, scaled_norm_density(grid, k), color=color, lw=1.2, label=f"K={k}")
    ax.axvline(1.0, color="k", lw=0.8, ls=":")
    ax.set(
        xlabel=r"$\|Z\|/\sqrt{K}$", ylabel="density", yscale="log", ylim=(1e-2, None), xlim=(0, 2.6)
    )
    ax.set_title("radius concentrates at 1 (lines: exact)")
    ax.legend(ncols=2, fontsize=8)


def plot_std_vs_k(ax, checks: dict[tuple[str, int], LawCheck]) -> None:
    """Empirical std of ||Z||/sqrt(K) (±2 se) on log-log axes, with the exact std and 1/sqrt(2K)."""
    ks = np.array(_ks(checks, "gaussian"))
    fine = np.geomspace(2, ks.max(), 200)
    ax.plot(fine, asymptotic_std(fine), "k--", lw=1, label=r"$1/\sqrt{2K}$")
    ax.plot(fine, std_scaled_norm(fine), color="C0", lw=1.2, label="exact (gammaln)")
    r = [checks["gaussian", k].radius for k in ks]
    ax.errorbar(
        ks, [s.std for s in r], yerr=[2 * s.se_std for s in r], fmt="o", ms=3.5, color="C1",
        label="empirical ± 2 se",
    )  # fmt: skip
    ax.set(xscale="log", yscale="log", xlabel="K", ylabel=r"std of $\|Z\|/\sqrt{K}$")
    ax.set_xscale("log", base=2)
    ax.set_title("spread shrinks as $1/\\sqrt{2K}$")
    ax.legend()


def plot_std_ratio(ax, checks: dict[tuple[str, int], LawCheck]) -> None:
    """std · sqrt(2K) against K: the exact curve rises to 1 as 1 - 1/(8K); empirical ± 2 se."""
    ks = np.array(_ks(checks, "gaussian"))
    fine = np.geomspace(2, ks.max(), 200)
    scale = 1 / asymptotic_std(ks)
    r = [checks["gaussian", k].radius for k in ks]
    ax.axhline(1.0, color="k", ls="--", lw=1, label="asymptote")
    ax.plot(fine, std_scaled_norm(fine) / asymptotic_std(fine), color="C0", lw=1.2, label="exact")
    ax.plot(fine, 1 - 1 / (8 * fine), color="C2", lw=1, ls=":", label=r"$1 - 1/(8K)$")
    ax.errorbar(
        ks, [s.std for s in r] * scale, yerr=[2 * s.se_std for s in r] * scale, fmt="o", ms=3.5,
        color="C1", label="empirical ± 2 se",
    )  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set(xlabel="K", ylabel=r"std $\times\sqrt{2K}$")
    ax.set_title("the asymptote is approached")
    ax.legend(loc="lower right")


def _law_label(law: str, show: bool) -> str | None:
    return LAW_LABELS[law] if show else None


def plot_projection(
    ax,
    checks: dict[tuple[str, int], LawCheck],
    k: int,
    *,
    scaled: bool,
    laws_in_legend: bool = True,
) -> None:
    """Histogram of <v_1, U> per law at K, with the Beta-derived density; in sqrt(K) units if
    `scaled`."""
    unit = np.sqrt(k) if scaled else 1.0
    grid = np.linspace(-0.999, 0.999, 801) if not scaled else np.linspace(-4, 4, 801) / unit
    grid = grid[np.abs(grid) < 1]
    bins = np.linspace(-4, 4, 61) if scaled else np.linspace(-1, 1, 41)
    for i, law in enumerate(LAWS):
        if (law, k) in checks:
            t = checks[law, k].projections[:, 0] * unit
            label = _law_label(law, laws_in_legend)
            ax.hist(t, bins=bins, density=True, histtype="step", lw=1.3, color=f"C{i}", label=label)
    density = np.exp(projection_log_density(grid, k)) / unit
    label = r"exact: $\frac{1+t}{2}\sim\mathrm{Beta}(\frac{K-1}{2},\frac{K-1}{2})$"
    ax.plot(grid * unit, density, "k", lw=1.2, label=label)
    xlabel = r"$\sqrt{K}\,\langle v_1, U\rangle$" if scaled else r"$\langle v_1, U\rangle$"
    ax.set(xlabel=xlabel, ylabel="density", xlim=(bins[0], bins[-1]))
    ax.set_title(f"projection on a random direction, K={k}")
    ax.legend(fontsize=7, loc="upper left")


def plot_p_values(
    ax, checks: dict[tuple[str, int], LawCheck], test: str, *, level: float = 1e-3,
    laws_in_legend: bool = True,
) -> None:  # fmt: skip
    """Bonferroni-combined p-value of `test` ("uniformity" or "independence") against K, per law;
    p-values below 1e-300 are drawn at 1e-300."""
    for i, law in enumerate(LAWS):
        ks = _ks(checks, law)
        p = [max(getattr(checks[law, k], test).combined_p, 1e-300) for k in ks]
        ax.plot(ks, p, "o-", ms=3.5, lw=1, color=f"C{i}", label=_law_label(law, laws_in_legend))
    ax.axhline(level, color="k", ls=":", lw=1, label=f"p = {level:g}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set(xlabel="K", ylabel="combined p-value (Bonferroni)", ylim=(None, 10))
    titles = {
        "uniformity": "KS test: is U uniform?",
        "independence": "rank correlation: U indep. of ||X||?",
    }
    ax.set_title(titles[test])
    if laws_in_legend:
        ax.legend(fontsize=7, loc="center right")


def plot_norm_vs_projection(
    ax, checks: dict[tuple[str, int], LawCheck], k: int, *, bins: int = 10,
    laws_in_legend: bool = True,
) -> None:  # fmt: skip
    """Median of K<v_1, U>^2 within each norm decile, per law at K; flat under the lemma, at the
    median of K Beta(1/2, (K-1)/2) (0.455, the chi^2_1 median, for large K)."""
    for i, law in enumerate(LAWS):
        if (law, k) not in checks:
            continue
        c = checks[law, k]
        x = c.norms / np.sqrt(k)
        y = k * c.projections[:, 0] ** 2
        edges = np.quantile(x, np.linspace(0, 1, bins + 1))
        which = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, bins - 1)
        centres = [np.median(x[which == b]) for b in range(bins)]
        medians = [np.median(y[which == b]) for b in range(bins)]
        label = _law_label(law, laws_in_legend)
        ax.plot(centres, medians, "o-", ms=3.5, lw=1, color=f"C{i}", label=label)
    exact = k * stats.beta(0.5, (k - 1) / 2).median()  # K t^2 with t^2 ~ Beta(1/2, (K-1)/2)
    ax.axhline(exact, color="k", ls=":", lw=1, label="exact median, any norm")
    ax.set(
        xlabel=r"$\|X\|/\sqrt{K}$ (decile medians)", ylabel=r"median of $K\langle v_1,U\rangle^2$"
    )
    ax.set_title(f"direction vs norm, K={k}")
    ax.legend(fontsize=7, loc="upper left")


def plot_rank_correlations(
    ax, checks: dict[tuple[str, int], LawCheck], *, level: float = 1e-3,
    laws_in_legend: bool = True,
) -> None:  # fmt: skip
    """Each direction's Spearman rho(||X||, <v_j, U>^2) times sqrt(n) (~N(0, 1) under the lemma),
    per law against K (jittered), with the two-sided Bonferroni band at `level`; clipped at ±12."""
    width = 0.0
    for i, law in enumerate(LAWS):
        for k in _ks(checks, law):
            c = checks[law, k]
            z = np.clip(c.independence.statistics * np.sqrt(c.norms.size), -12, 12)
            jitter = np.exp(np.linspace(-0.12, 0.12, z.size) + 0.12 * (i - 1))
            label = _law_label(law, laws_in_legend and k == min(_ks(checks, law)))
            ax.scatter(k * jitter, z, s=8, color=f"C{i}", label=label)
            width = stats.norm.isf(level / (2 * z.size))
    ax.axhspan(-width, width, color="0.88", zorder=0, label=f"Bonferroni band, level {level:g}")
    ax.set_xscale("log", base=2)
    ax.set(xlabel="K", ylabel=r"$\sqrt{n}\,\rho$ per direction (clipped at ±12)", ylim=(-13, 13))
    ax.set_title("rank correlation, each direction")
    ax.legend(fontsize=7, loc="lower left")
