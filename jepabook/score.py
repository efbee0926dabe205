"""JEPA-SCORE: the sum of log singular values of an encoder's input Jacobian.

For an encoder f: R^D -> R^K and a sample x, with J = J_f(x) in R^{K x D},

    JEPA-SCORE(x) = sum_{k=1}^{min(K, D)} log max(sigma_k(J), eps) = 1/2 log det(J J^T)

(the paper's eq. 5, with the paper's eps rule for rank-deficient Jacobians). Higher means more likely.

`reference_jepa_score` is the paper's Appendix B listing, kept exactly for comparison.
`jepa_score` is the implementation to use: exact, batched in chunks with bounded memory, log-determinant
accumulated in float64 from a QR factorisation and the SVD of its small min(K, D)-sized triangle.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Literal

import torch
from torch import nn
from torch.func import jvp, vjp, vmap

Pool = Literal["mean", "first"]
Mode = Literal["auto", "reverse", "forward"]

DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes held by the Jacobians of one chunk


def reference_jepa_score(model: nn.Module, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """The paper's listing (Appendix B), unchanged: K backward passes, then an SVD per sample.

    Args:
        model: encoder mapping (B, ...) to (B, K); must not mix samples (eval mode).
        x: inputs (B, ...).
        eps: singular values are clipped at eps before the log.

    Returns:
        (B,) JEPA-SCORE.
    """
    J = torch.autograd.functional.jacobian(lambda x: model(x).sum(0), inputs=x)
    with torch.inference_mode():
        J = J.flatten(2).permute(1, 0, 2)
        svdvals = torch.linalg.svdvals(J)
        jepa_score = svdvals.clip_(eps).log_().sum(1)
    return jepa_score


def jepa_score(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    eps: float = 1e-6,
    pool: Pool | None = None,
    chunk_size: int | None = None,
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    mode: Mode = "auto",
) -> torch.Tensor:
    """Exact JEPA-SCORE of every sample of a batch.

    Args:
        model: encoder mapping (B, ...) to (B, K), or to token outputs (B, N, K) when `pool` is set.
            Samples must not interact (the call puts the model in eval mode and restores its modes after).
        x: inputs (B, ...), any trailing shape; D = prod of the trailing sizes.
        eps: singular values are clipped at eps before the log (the paper's rule), so a rank-deficient
            Jacobian contributes log(eps) per missing direction, as in the listing.
        pool: how to reduce token outputs (B, N, K) to (B, K): "mean" over tokens or the "first" (CLS) token.
        chunk_size: samples per chunk; by default chosen so one chunk's Jacobians fit `memory_budget`.
        memory_budget: bytes the Jacobians of one chunk may hold when `chunk_size` is not given.
        mode: "reverse" (K vector-Jacobian products), "forward" (D Jacobian-vector products) or
            "auto" (the cheaper of the two: reverse when K <= D).

    Returns:
        (B,) float64 tensor on x's device: sum of log singular values of J_f(x_b) for each b.
    """
    _check_inputs(model, x, eps, pool, mode, chunk_size)
    encoder = _pooled(model, pool)
    with eval_mode(model), torch.enable_grad():
        K = _embedding_width(encoder, x[:1])
        D = x[0].numel()
        size = chunk_size or _auto_chunk_size(K, D, x.element_size(), memory_budget)
        scores = []
        for start in range(0, x.shape[0], size):
            J = jacobian_rows(encoder, x[start : start + size], K, mode=mode)
            _check_finite(J, start)
            scores.append(logdet_from_jacobian(J, eps))
    return torch.cat(scores).detach()


def jacobian_rows(
    encoder: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, K: int, *, mode: Mode = "auto"
) -> torch.Tensor:
    """Per-sample Jacobians of a batch-wise encoder.

    Args:
        encoder: maps (B, ...) to (B, K) with no interaction between samples.
        x: inputs (B, ...).
        K: embedding width.
        mode: see `jepa_score`.

    Returns:
        (B, K, D) Jacobians, D = prod(x.shape[1:]), in x's dtype.
    """
    B, D = x.shape[0], x[0].numel()
    use_forward = mode == "forward" or (mode == "auto" and D < K)
    x = x.detach()
    if use_forward:
        basis = torch.eye(D, dtype=x.dtype, device=x.device).reshape(D, 1, *x.shape[1:])
        tangents = basis.expand(D, *x.shape)
        J = vmap(lambda t: jvp(encoder, (x,), (t,))[1])(tangents)  # (D, B, K)
        return J.permute(1, 2, 0).reshape(B, K, D)
    out, pullback = vjp(encoder, x)
    if out.shape != (B, K):
        raise ValueError(
            f"model: batch mismatch: {B} input samples gave output of shape {tuple(out.shape)}, "
            f"expected ({B}, {K})"
        )
    basis = torch.eye(K, dtype=out.dtype, device=out.device).unsqueeze(1).expand(K, B, K)
    try:
        (J,) = vmap(pullback)(basis)  # (K, B, ...)
    except (RuntimeError, NotImplementedError):
        J = _pullback_loop(encoder, x, basis)  # ops without batching rules: one pass per row
    return J.reshape(K, B, D).transpose(0, 1)


def _pullback_loop(encoder: Callable, x: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """(K, B, ...) vector-Jacobian products one basis vector at a time, with plain autograd."""
    x = x.detach().requires_grad_(True)
    out = encoder(x)
    rows = [
        torch.autograd.grad(out, x, v, retain_graph=k < len(basis) - 1)[0]
        for k, v in enumerate(basis)
    ]
    return torch.stack(rows)


def logdet_from_jacobian(J: torch.Tensor, eps: float) -> torch.Tensor:
    """Sum of log max(sigma_k, eps) over the min(K, D) singular values of each Jacobian.

    In float64: a QR factorisation of the tall side (J^T when K <= D) leaves a min(K, D)-sized
    triangle R with the same singular values as J, and only R goes through an SVD. Unlike the
    eigenvalues of the Gram matrix J J^T, this does not square the condition number, so singular
    values near eps keep their digits.

    Args:
        J: (B, K, D) Jacobians.
        eps: clip level for the singular values.

    Returns:
        (B,) float64 scores.
    """
    J = J.to(torch.float64)
    tall = J.transpose(1, 2) if J.shape[1] <= J.shape[2] else J
    R = torch.linalg.qr(tall, mode="r").R  # (B, min(K, D), min(K, D))
    return torch.linalg.svdvals(R).clamp(min=eps).log().sum(-1)


def _pooled(model: Callable, pool: Pool | None) -> Callable[[torch.Tensor], torch.Tensor]:
    def encoder(x: torch.Tensor) -> torch.Tensor:
        out = model(x)
        if out.ndim == 3 and pool == "mean":
            return out.mean(1)
        if out.ndim == 3 and pool == "first":
            return out[:, 0]
        return out

    return encoder


def _embedding_width(encoder: Callable, x1: torch.Tensor) -> int:
    """Run one sample through the encoder and check the output layout; returns K."""
    with torch.no_grad():
        out = encoder(x1)
    if not isinstance(out, torch.Tensor):
        raise TypeError(
            f"model: expected a tensor output of shape (B, K), got {type(out).__name__}"
        )
    if out.ndim == 3:
        raise ValueError(
            f"model: output has token shape {tuple(out.shape)} (B, N, K); "
            "pass pool='mean' or pool='first' to reduce it to (B, K)"
        )
    if out.ndim != 2:
        raise ValueError(
            f"model: expected output of shape (B, K) or (B, N, K), got {tuple(out.shape)}"
        )
    if out.shape[0] != 1:
        raise ValueError(
            f"model: batch mismatch: 1 input sample gave {out.shape[0]} output rows; "
            "the model must map (B, ...) to (B, K)"
        )
    return out.shape[1]


def _auto_chunk_size(K: int, D: int, itemsize: int, budget: int) -> int:
    """Samples per chunk so that the (chunk, K, D) Jacobian plus its float64 copy fit the budget."""
    per_sample = K * D * (itemsize + 8)
    return max(1, budget // per_sample)


def _check_inputs(
    model: Callable,
    x: torch.Tensor,
    eps: float,
    pool: str | None,
    mode: str,
    chunk_size: int | None,
) -> None:
    if not callable(model):
        raise TypeError(
            f"model: expected a callable encoder (e.g. nn.Module), got {type(model).__name__}"
        )
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"x: expected a torch.Tensor of shape (B, ...), got {type(x).__name__}")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(
            f"x: expected a non-empty batch of shape (B, ...) with B >= 1, got {tuple(x.shape)}"
        )
    if not x.is_floating_point():
        raise TypeError(f"x: expected a floating-point tensor, got dtype {x.dtype}")
    if not eps > 0:
        raise ValueError(f"eps: expected a positive number, got {eps}")
    if pool not in (None, "mean", "first"):
        raise ValueError(f"pool: expected None, 'mean' or 'first', got {pool!r}")
    if mode not in ("auto", "reverse", "forward"):
        raise ValueError(f"mode: expected 'auto', 'reverse' or 'forward', got {mode!r}")
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size: expected a positive integer or None, got {chunk_size}")


def _check_finite(J: torch.Tensor, offset: int) -> None:
    bad = ~torch.isfinite(J).flatten(1).all(1)
    if bad.any():
        index = offset + int(bad.nonzero()[0])
        raise FloatingPointError(f"x: the Jacobian at sample index {index} has non-finite entries")


@contextlib.contextmanager
def eval_mode(model: Callable) -> Iterator[None]:
    """Put every submodule in eval mode for the call, then restore each module's own mode."""
    modules = list(model.modules()) if isinstance(model, nn.Module) else []
    modes = [m.training for m in modules]
    for m in modules:
        m.training = False
    try:
        yield
    finally:
        for m, mode in zip(modules, modes, strict=True):
            m.training = mode
