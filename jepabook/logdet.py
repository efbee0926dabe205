"""Sum of log singular values of a batch of Jacobians, from their Gram matrices in float64.

For J in R^{K x D} with r = min(K, D), the r singular values of J are the square roots of the
eigenvalues of the r x r Gram matrix G (J J^T when K <= D, else J^T J), so

    sum_k log max(sigma_k, eps) = 1/2 log det G   when every sigma_k >= eps.

G is accumulated in float64 over slabs of J (only one slab is ever copied to float64) and factorised
by Cholesky, G = L L^T, 1/2 log det G = sum_i log L_ii. The eps rule needs sigma_min >= eps, which is
certified without an eigen-decomposition: trace(G^-1) = ||L^-1||_F^2 >= 1 / lambda_min, so
lambda_min >= 1 / ||L^-1||_F^2. Samples that fail the factorisation or the certificate (rank-deficient
or near it) go through `eigvalsh(G)` and the clipped formula.

Accuracy: forming G squares the condition number, so in float64 singular values are resolved down to
about 1e-8 sigma_max, finer than the float32 Jacobian itself is accurate (about 1e-7 sigma_max per
entry); no SVD of the K x D matrix is ever taken.
"""

from __future__ import annotations

import torch

SLAB_BYTES = 8 << 20  # float64 copy of one slab of J (larger slabs were no faster on a CPU)


def gram(J: torch.Tensor, slab_bytes: int = SLAB_BYTES) -> torch.Tensor:
    """Gram matrices of the short side, accumulated in float64 over slabs of the long side.

    Args:
        J: (B, K, D) Jacobians, any floating dtype.
        slab_bytes: bytes of float64 copy allowed for one slab.

    Returns:
        (B, r, r) float64, r = min(K, D): J J^T when K <= D, else J^T J.
    """
    B, K, D = J.shape
    wide = K <= D
    r, long = (K, D) if wide else (D, K)
    G = torch.zeros(B, r, r, dtype=torch.float64, device=J.device)
    step = max(1, slab_bytes // (8 * B * r))
    for start in range(0, long, step):
        if wide:
            S = J[:, :, start : start + step].to(torch.float64)  # (B, K, s)
        else:
            S = J[:, start : start + step, :].to(torch.float64).transpose(1, 2)  # (B, D, s)
        G.baddbmm_(S, S.transpose(1, 2))
    return G


def half_logdet(G: torch.Tensor, eps: float) -> torch.Tensor:
    """sum_k log max(sqrt(lambda_k), eps) over the eigenvalues of each symmetric PSD matrix.

    Args:
        G: (B, r, r) float64 Gram matrices.
        eps: clip level for the singular values sqrt(lambda_k).

    Returns:
        (B,) float64.
    """
    result = torch.empty(G.shape[0], dtype=torch.float64, device=G.device)
    L, info = torch.linalg.cholesky_ex(G)
    factored = info == 0
    certified = torch.zeros_like(factored)
    if factored.any():
        Lf = L[factored]
        eye = torch.eye(G.shape[-1], dtype=G.dtype, device=G.device).expand_as(Lf)
        L_inv = torch.linalg.solve_triangular(Lf, eye, upper=False)
        lambda_min_bound = 1.0 / L_inv.square().sum((-2, -1))
        ok = lambda_min_bound >= eps**2
        certified[factored] = ok
        diagonal = Lf.diagonal(dim1=-2, dim2=-1)
        result[factored] = diagonal.log().sum(-1)
    rest = ~certified
    if rest.any():
        eigenvalues = torch.linalg.eigvalsh(G[rest])
        result[rest] = eigenvalues.clamp(min=0).sqrt().clamp(min=eps).log().sum(-1)
    return result


def logdet_from_jacobian(J: torch.Tensor, eps: float) -> torch.Tensor:
    """Sum of log max(sigma_k, eps) over the min(K, D) singular values of each Jacobian.

    Args:
        J: (B, K, D) Jacobians.
        eps: clip level for the singular values.

    Returns:
        (B,) float64 scores.
    """
    return half_logdet(gram(J), eps)
