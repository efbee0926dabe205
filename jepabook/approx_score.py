"""Matrix-free approximate JEPA-SCORE: block stochastic Lanczos quadrature on J J^T.

For an encoder f: R^D -> R^K and a sample x with Jacobian J (K x D), K <= D,

    JEPA-SCORE(x) = 1/2 log det(A) = 1/2 tr log(A),   A = J J^T  (K x K, symmetric PSD).

The exact engine (`jepabook.score.jepa_score`) builds all K rows of J: K vector-Jacobian products.
This module touches J only through products, per sample and batched over samples and probes:

    A V = J (J^T V):   J^T V by a vector-Jacobian product (`torch.func.vjp`, one backward pass),
                       J W   by a Jacobian-vector product (`torch.func.jvp`, about one forward
                       pass carrying tangents), both vmapped over the b columns of the block V.

(When K > D the short side is A = J^T J on R^D instead: a jvp then a vjp.)

Algorithm (per sample, all samples of a chunk at once; r = min(K, D)):

0. Dead units: one product A g with a seeded Gaussian g (r,). (A g)_k = J_k . (J^T g) is exactly 0
   when row k of J is exactly 0 (a unit whose gradient is cut, e.g. a ReLU6 saturated everywhere)
   and almost surely non-zero otherwise. Those rows and columns of A split off exactly, each
   contributing log(eps) (the eps rule); the rest runs on the r' live coordinates.
1. Probe block: Q_1 (r, b), b orthonormal columns on the live coordinates, the Q factor of a
   seeded Gaussian matrix (the same for every sample).
2. Block Lanczos with full re-orthogonalisation, s = `steps` steps: the Krylov basis
   [Q_1, ..., Q_s] (r, bs) and the block-tridiagonal T = Q^T A Q (bs, bs), in float64, and the
   next off-diagonal block R (b, b), which gives each Ritz pair's residual ||R u_j[bs-b:]||.
   Cost: b s + 1 products A V (b s + 1 vjp and as many jvp) against K vjp for the exact score.
3. Quadrature: with the eigenpairs (theta_j, u_j) of T, f(theta) = log max(theta, eps^2),
   - Ritz pairs with residual <= tol * theta_j (and theta_j > eps^2) count as eigenvalues: c
     "known" terms f(theta_j);
   - for the other r' - c dimensions, each probe's Gauss weights w_ij = u_j[i]^2 on the
     unconverged Ritz values give a mean of f; their ratio (sum_ij w_ij f / sum_ij w_ij) is
     extrapolated: estimate = 1/2 [sum_known f + (r' - c) * mean] + 1/2 (r - r') log eps^2.
   When b s = r' the Krylov space is all of R^r', every pair converges, and the result is exact
   up to rounding: the method has the exact score as its limit.
4. Error estimate: the spread of the b per-probe means: stderr = (r' - c)/2 * std_i / sqrt(b)
   * sqrt(1 - b/r'). It measures the probe (sampling) variance only, not the quadrature bias.

Bias and variance.
- Variance: the probes sample the unconverged part of the spectrum in a random orthonormal
  basis; the variance falls as (r' - b) / (r' b) and grows with the spread of the log eigenvalues.
- Bias: s steps integrate polynomials of degree 2s - 1 exactly; log has a singularity at 0 and
  its even derivatives are negative, so the Gauss rule over-estimates log at the small
  eigenvalues it cannot resolve: the estimate is biased upwards, more so the worse J is
  conditioned, and the bias differs between images (which is what costs rank correlation).
  Measured (benchmarks/approx_bench.py, results in benchmarks/results/approx_bench_cpu.md): for the
  book's K = 64 encoders the bias is about half the spread of the exact scores at b s = K/4; at the
  same number of products, fewer probes and more steps (b = 2, s = 32 against b = 8, s = 8) cut
  the bias and its spread between inputs about four times on a ViT (K = 512); on MiniLM (K = 381)
  the bias falls but the spread grows (two probes sample the spectrum less well); and the steps
  are sequential, so the wall time falls less than the products. No setting reached a rank
  correlation of 0.99 with 10 times fewer products on any encoder measured.
- Failure modes: (a) rank-deficient or nearly rank-deficient J (beyond exactly dead units), e.g.
  the ImageNet MobileNetV2 at 32 px, whose 1280 features depend on the image through 320 channels
  (rank <= 320): the exact rule clips each singular value at eps; here the clip applies to Ritz
  values (quadrature nodes), a smoothed spectrum, so the collapsed directions are seen at the
  smallest node and the score is over-estimated by up to |log eps| per such direction, by an amount
  that varies between inputs as much as the exact scores do. (b) float32 products: A V is accurate
  to about 1e-7 ||A||, so singular values below about 3e-4 sigma_max are not resolved (the exact
  path, forming J J^T in float64 from float32 rows, resolves about 1e-7 sigma_max); a float64
  model and input lower this floor, but on the MobileNetV2 this left the bias of (a) as it was: the
  limit there is the polynomial degree. (c) For ranking only the order matters; the error is
  largest where scores are close.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch.func import jvp, vjp, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

# 8 probes x 8 steps: 65 products A v = 130 Jacobian products per sample, about 10 times fewer than
# the exact score's K = 1280 for the ImageNet CNNs. No setting met the accuracy target in
# benchmarks/approx_bench.py; b = 2, s = 32 (the same products) is less biased there but, with
# fewer probes, not always closer in rank, and slower in wall time (sequential steps).
DEFAULT_PROBES = 8
DEFAULT_STEPS = 8
DEFAULT_TOL = 1e-2  # a Ritz pair with residual <= tol * theta counts as an eigenpair


@dataclass(frozen=True)
class ApproxResult:
    """Scores (B,) float64, their standard errors (B,) float64, and the products used per sample."""

    score: torch.Tensor
    stderr: torch.Tensor
    products: int  # A-products per sample (each = 1 vjp + 1 jvp)


def approx_jepa_score(
    encoder: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    K: int,
    *,
    probes: int = DEFAULT_PROBES,
    steps: int = DEFAULT_STEPS,
    eps: float = 1e-6,
    seed: int = 0,
    chunk_size: int = 8,
    tol: float = DEFAULT_TOL,
) -> ApproxResult:
    """Approximate JEPA-SCORE of every sample of x by block Lanczos quadrature.

    Args:
        encoder: maps (B, ...) to (B, K), samples independent, in eval mode, gradients enabled.
        x: inputs (B, ...); D = prod of the trailing sizes.
        K: embedding width.
        probes: b, columns of the probe block (clipped at r = min(K, D)).
        steps: s, block Lanczos steps, at most r // b (the Krylov space has bs <= r columns). A
            sample with at most b s live coordinates is computed exactly instead, from the products
            A e_k of its live unit vectors (fewer products than the approximation's).
        eps: singular values (square roots of the Ritz values) are clipped at eps.
        seed: seeds the probe block; the same seed gives the same scores (one block per chunk,
            drawn from a generator seeded with `seed`, the same for every sample of the chunk).
        chunk_size: samples per batched product (the scores do not depend on it: every sample's
            probes and steps are the same).

    Returns:
        ApproxResult with score (B,), stderr (B,) (0 where the Krylov space is complete, and 0
        with a single probe, b = 1, which gives no spread to estimate it from).
    """
    with _no_fastpath():
        return _approx(encoder, x, K, probes, steps, eps, seed, chunk_size, tol)


@contextlib.contextmanager
def _no_fastpath() -> Iterator[None]:
    """Turn off the kernels without a forward-mode AD rule: nn.TransformerEncoderLayer's inference
    fast path, and the fused (flash) kernels of scaled_dot_product_attention (used, e.g., by the
    transformers BERT of all-MiniLM-L6-v2); attention then runs as plain matrix products."""
    enabled = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)


def _approx(encoder, x, K, probes, steps, eps, seed, chunk_size, tol) -> ApproxResult:
    D = x[0].numel()
    r = min(K, D)
    b = min(probes, r)
    s = max(1, min(steps, r // b))
    scores, errors = [], []
    for start in range(0, x.shape[0], chunk_size):
        part = x[start : start + chunk_size].detach()
        operator = _gram_operator(encoder, part, K, D)
        live = live_coordinates(operator, part.shape[0], r, seed, part.device)  # (B, r)
        n_live = live.sum(1)  # (B,)
        score = torch.zeros(part.shape[0], dtype=torch.float64, device=part.device)
        error = torch.zeros_like(score)
        small = n_live <= b * s  # the live space is no larger than the Krylov space: exact
        for group in (~small, small):
            if not group.any():
                continue
            op = operator if group.all() else _gram_operator(encoder, part[group], K, D)
            if group is small:
                score[group] = _exact_on(op, live[group], eps)
            else:
                T, R = block_lanczos(op, _probe_block(live[group], b, seed), s)
                score[group], error[group] = _quadrature(T, R, b, n_live[group], eps, tol)
        scores.append(score + 0.5 * (r - n_live) * math.log(eps**2))
        errors.append(error)
    return ApproxResult(torch.cat(scores), torch.cat(errors), b * s + 1)


def _exact_on(
    operator: Callable[[torch.Tensor], torch.Tensor], live: torch.Tensor, eps: float
) -> torch.Tensor:
    """(B,) 1/2 sum log max(lambda, eps^2) over A restricted to each sample's live coordinates
    (B, r), from the products A e_k of its n_live unit vectors (padded with unit eigenvalues)."""
    B, r = live.shape
    n = live.sum(1)  # (B,)
    m = int(n.max())
    V = torch.zeros(B, r, m, dtype=torch.float64, device=live.device)
    rows, cols = live.nonzero(as_tuple=True)
    rank = torch.cumsum(live.long(), 1)[rows, cols] - 1  # position of each live k in its sample
    V[rows, cols, rank] = 1
    G = V.transpose(1, 2) @ operator(V)  # (B, m, m)
    padded = torch.arange(m, device=live.device).unsqueeze(0) >= n.unsqueeze(1)  # (B, m)
    G = (G + G.transpose(1, 2)) / 2 + torch.diag_embed(padded.double())
    theta = torch.linalg.eigvalsh(G)
    return 0.5 * theta.clamp(min=eps**2).log().sum(1)


def live_coordinates(
    operator: Callable[[torch.Tensor], torch.Tensor],
    B: int,
    r: int,
    seed: int,
    device: torch.device,
) -> torch.Tensor:
    """(B, r) bool: the coordinates k with A_kk = ||J_k||^2 > 0, from one product A g.

    (A g)_k = J_k . (J^T g) is exactly 0 when row k of J is exactly 0 (a unit whose gradient is
    cut, e.g. a ReLU6 saturated at every position) and almost surely non-zero otherwise. Such
    rows and columns of A split off exactly: each contributes log(eps) to the score (the eps
    rule), and the Lanczos process runs on the rest. Costs one vjp and one jvp.
    """
    generator = torch.Generator().manual_seed(seed + 1)
    g = torch.randn(r, 1, generator=generator, dtype=torch.float64).to(device)
    Ag = operator(g.expand(B, r, 1))[..., 0]  # (B, r)
    live = Ag != 0
    return live | ~live.any(1, keepdim=True)  # an all-zero Jacobian: keep every coordinate


def _gram_operator(
    encoder: Callable, x: torch.Tensor, K: int, D: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """V (B, r, n) float64 -> A V (B, r, n) float64, A the per-sample short-side Gram matrix."""
    shape = x.shape
    out, pull = vjp(encoder, x)  # one forward pass, its graph kept for every vjp
    if tuple(out.shape) != (shape[0], K):
        raise ValueError(f"model: expected output ({shape[0]}, {K}), got {tuple(out.shape)}")
    dtype = out.dtype

    def push(tangent: torch.Tensor) -> torch.Tensor:  # (B, ...) -> (B, K)
        return jvp(encoder, (x,), (tangent,))[1]

    def vjps(U: torch.Tensor) -> torch.Tensor:  # (n, B, K) -> (n, B, ...)
        return vmap(lambda u: pull(u)[0])(U)

    def wide(V: torch.Tensor) -> torch.Tensor:  # A = J J^T on R^K
        U = V.permute(2, 0, 1).to(dtype)  # (n, B, K)
        return vmap(push)(vjps(U)).permute(1, 2, 0).to(torch.float64)

    def tall(V: torch.Tensor) -> torch.Tensor:  # A = J^T J on R^D
        W = V.permute(2, 0, 1).to(dtype).reshape(V.shape[2], *shape)  # (n, B, ...)
        return vjps(vmap(push)(W)).reshape(V.shape[2], shape[0], D).permute(1, 2, 0).double()

    return wide if K <= D else tall


def _probe_block(live: torch.Tensor, b: int, seed: int) -> torch.Tensor:
    """(B, r, b) orthonormal probe columns supported on each sample's live coordinates (B, r):
    one seeded Gaussian block (r, b), the same for every sample, masked, then orthonormalised."""
    B, r = live.shape
    generator = torch.Generator().manual_seed(seed)
    G = torch.randn(r, b, generator=generator, dtype=torch.float64).to(live.device)
    Q, _ = torch.linalg.qr(G * live.unsqueeze(2))
    return Q


def block_lanczos(
    operator: Callable[[torch.Tensor], torch.Tensor], Q1: torch.Tensor, steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Block Lanczos with full re-orthogonalisation, batched over samples.

    Args:
        operator: V (B, r, b) -> A V (B, r, b), A symmetric PSD per sample.
        Q1: (B, r, b) orthonormal starting block.
        steps: s, number of blocks (each costs one call of `operator`), b s <= r.

    Returns:
        T (B, m, m) float64 = Q^T A Q over the Krylov basis Q (B, r, m), m = b s, and the
        next off-diagonal block R (B, b, b) (A Q = Q T + Q_next R E_s^T; zero when m = r), from
        which the residual of Ritz pair j is ||R u_j[m-b:]||.
    """
    B, r, b = Q1.shape
    m = b * steps
    basis = [Q1]
    T = torch.zeros(B, m, m, dtype=torch.float64, device=Q1.device)
    R = torch.zeros(B, b, b, dtype=torch.float64, device=Q1.device)
    for j in range(steps):
        Qj = basis[-1]
        W = operator(Qj)  # (B, r, b)
        lo = j * b
        T[:, lo : lo + b, lo : lo + b] = Qj.transpose(1, 2) @ W
        if (j + 1) * b >= r:
            break
        Q = torch.cat(basis, dim=2)  # (B, r, (j+1) b)
        for _ in range(2):  # full re-orthogonalisation, twice is enough
            W = W - Q @ (Q.transpose(1, 2) @ W)
        Qn, R = torch.linalg.qr(W)  # (B, r, b), (B, b, b)
        if j == steps - 1:
            break
        T[:, lo + b : lo + 2 * b, lo : lo + b] = R
        T[:, lo : lo + b, lo + b : lo + 2 * b] = R.transpose(1, 2)
        basis.append(Qn)
    return (T + T.transpose(1, 2)) / 2, R


def _quadrature(
    T: torch.Tensor, R: torch.Tensor, b: int, r: torch.Tensor, eps: float, tol: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) estimates of 1/2 tr log A and their standard errors from T (B, m, m), R (B, b, b),
    on spaces of dimension r (B,) (each sample's live coordinates).

    Ritz pairs whose residual ||A y - theta y|| is at most tol * max(theta, eps^2) count as
    eigenpairs (their log is known to about tol); the other r - c eigenvalues are estimated
    by the probes' Gauss quadrature restricted to the unconverged Ritz values (a ratio
    estimator: the mean of log over the probes' mass outside the converged directions).
    """
    theta, U = torch.linalg.eigh(T)  # (B, m), (B, m, m)
    m = T.shape[1]
    logs = theta.clamp(min=eps**2).log()  # (B, m)
    residual = (R @ U[:, m - b :, :]).norm(dim=1)  # (B, m)
    converged = (residual <= tol * theta) & (theta > eps**2)
    converged = converged | (m >= r).unsqueeze(1)
    known = (logs * converged).sum(1)  # (B,)
    c = converged.sum(1)  # (B,)
    weights = U[:, :b, :].square() * ~converged.unsqueeze(1)  # (B, b, m): mass off converged
    mass = weights.sum(2)  # (B, b)
    terms = (weights * logs.unsqueeze(1)).sum(2)  # (B, b)
    mean = terms.sum(1) / mass.sum(1).clamp(min=1e-300)  # (B,) mean log off converged
    per_probe = terms / mass.clamp(min=1e-300)  # (B, b)
    score = 0.5 * (known + (r - c) * mean)
    spread = per_probe.std(1) if b > 1 else torch.zeros_like(score)
    stderr = 0.5 * (r - c) * spread / math.sqrt(b) * (1 - b / r).clamp(min=0).sqrt()
    return score, stderr
