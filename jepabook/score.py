"""JEPA-SCORE: the sum of log singular values of an encoder's input Jacobian.

For an encoder f: R^D -> R^K and a sample x, with J = J_f(x) in R^{K x D},

    JEPA-SCORE(x) = sum_{k=1}^{min(K, D)} log max(sigma_k(J), eps) = 1/2 log det(J J^T)

(the paper's eq. 5, with the paper's eps rule for rank-deficient Jacobians). Higher means more likely.

`reference_jepa_score` is the paper's Appendix B listing, kept exactly for comparison.
`jepa_score` is the implementation to use: exact, the Jacobians from batched vector-Jacobian (or
Jacobian-vector) products in blocks sized to a memory budget (`jepabook.jacobian`), the log-determinant
from the float64 Gram matrix (`jepabook.logdet`), never an SVD of the K x D matrix.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Literal

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from jepabook.approx_score import DEFAULT_PROBES, DEFAULT_STEPS, approx_jepa_score
from jepabook.devices import resolve_device
from jepabook.jacobian import Plan, activation_bytes, jacobian_rows, plan_blocks
from jepabook.logdet import gram, half_logdet, logdet_from_jacobian
from jepabook.precision import Precision, check_precision, matmul_precision, with_precision

Pool = Literal["mean", "first"]
Mode = Literal["auto", "reverse", "forward"]
Method = Literal["exact", "approx"]

DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes one chunk may hold on a CPU

__all__ = [
    "jacobian_rows",
    "jepa_score",
    "jepa_score_with_error",
    "score_dataset",
    "logdet_from_jacobian",
    "plan_for",
    "reference_jepa_score",
]


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
    block_size: int | None = None,
    memory_budget: int | None = None,
    mode: Mode = "auto",
    precision: Precision = "float32",
    augment: Callable[[torch.Tensor], torch.Tensor] | None = None,
    n_views: int = 1,
    method: Method = "exact",
    probes: int | None = None,
    steps: int | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """JEPA-SCORE of every sample of a batch: exact (default) or approximate (`method="approx"`).

    Args:
        model: encoder mapping (B, ...) to (B, K), or to token outputs (B, N, K) when `pool` is set.
            Samples must not interact (the call puts the model in eval mode and restores its modes after).
        x: inputs (B, ...), any trailing shape; D = prod of the trailing sizes.
        eps: singular values are clipped at eps before the log (the paper's rule), so a rank-deficient
            Jacobian contributes log(eps) per missing direction, as in the listing.
        pool: how to reduce token outputs (B, N, K) to (B, K): "mean" over tokens or the "first" (CLS) token.
        chunk_size: samples per chunk; by default the most that fit `memory_budget`.
        block_size: basis vectors per batched Jacobian product; by default set from the device and
            `memory_budget` (see `jepabook.jacobian.plan_blocks`).
        memory_budget: bytes one chunk may hold (its Jacobians, forward graph and one block's backward);
            by default 1 GiB on a CPU and half the free memory on a GPU.
        mode: "reverse" (K vector-Jacobian products), "forward" (D Jacobian-vector products) or
            "auto" (the cheaper of the two: reverse when K <= D).
        precision: "float32" (exact), or on CUDA "tf32" (TF32 matrix products) or "bf16" (forward and
            backward under bfloat16 autocast); the log-determinant is always taken in float64.
        augment: with `n_views` > 1, a random view x -> g(x, T) (B, ...) -> (B, ...); the result is then
            the multi-view estimate of eq. (4), -logmeanexp over the views of -JEPA-SCORE.
        n_views: number of views M drawn with `augment` (1: score x itself).
        method: "exact" (all K Jacobian rows) or "approx" (block Lanczos quadrature from
            Jacobian-vector and vector-Jacobian products, `jepabook.approx_score`; in the model's
            own dtype, so no `precision` but "float32", and no `mode`, `block_size` or views).
            Biased upwards where J is ill-conditioned; see that module for when it fails.
        probes, steps: the approximation's probe block width b and Lanczos steps s (None: the
            defaults of `jepabook.approx_score`); it costs b s + 1 vjp and as many jvp per sample.
        seed: seeds the approximation's probes (the same seed gives the same scores).

    Returns:
        (B,) float64 tensor on x's device: sum of log singular values of J_f(x_b) for each b.
    """
    if method != "exact":
        _check_method(method, probes, steps, seed)
        return jepa_score_with_error(
            model, x, eps=eps, pool=pool, chunk_size=chunk_size, block_size=block_size,
            memory_budget=memory_budget, mode=mode, precision=precision, augment=augment,
            n_views=n_views, method=method, probes=probes, steps=steps, seed=seed,
        )[0]  # fmt: skip
    _check_method(method, probes, steps, seed)
    _check_inputs(model, x, eps, pool, mode, chunk_size, block_size, memory_budget)
    check_precision(precision, x.device)
    _check_views(augment, n_views)
    encoder = with_precision(_pooled(model, pool), precision)
    options = dict(
        eps=eps,
        mode=mode,
        chunk=chunk_size,
        block=block_size,
        budget=memory_budget,
        precision=precision,
    )
    if augment is None:
        return _score(model, encoder, x, **options)
    views = [_score(model, encoder, augment(x), **options) for _ in range(n_views)]
    return -logmeanexp(-torch.stack(views), dim=0)


def jepa_score_with_error(
    model: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    method: Method = "approx",
    probes: int | None = None,
    steps: int | None = None,
    seed: int = 0,
    eps: float = 1e-6,
    pool: Pool | None = None,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    **exact_options,
) -> tuple[torch.Tensor, torch.Tensor]:
    """JEPA-SCORE (B,) and a per-sample standard error (B,), both float64 on x's device.

    With method="approx" the error is the probe (sampling) part of the approximation's error
    (`jepabook.approx_score`); it does not include the quadrature bias. With method="exact"
    it is zero. Arguments as for `jepa_score`; `exact_options` (mode, block_size, precision,
    augment, n_views) apply to the exact method only.
    """
    _check_method(method, probes, steps, seed)
    if method == "exact":
        scores = jepa_score(
            model, x, eps=eps, pool=pool, chunk_size=chunk_size,
            memory_budget=memory_budget, **exact_options,
        )  # fmt: skip
        return scores, torch.zeros_like(scores)
    _check_approx_options(exact_options)
    _check_inputs(model, x, eps, pool, "auto", chunk_size, None, memory_budget)
    encoder = _pooled(model, pool)
    with eval_mode(model), frozen_parameters(model), torch.enable_grad():
        K = _embedding_width(encoder, x[:1])
        b = probes or DEFAULT_PROBES
        s = steps or DEFAULT_STEPS
        chunk = chunk_size or approx_chunk(encoder, x, K, b, s, memory_budget)
        result = approx_jepa_score(
            encoder, x, K, probes=b, steps=s, eps=eps, seed=seed, chunk_size=chunk
        )
    return result.score.detach(), result.stderr.detach()


def approx_chunk(
    encoder: Callable, x: torch.Tensor, K: int, probes: int, steps: int, budget: int | None
) -> int:
    """Samples per chunk for the approximation: its forward graph, the activations of 2 b
    batched products and the float64 Krylov basis (r x b s) of each sample fit `budget`."""
    budget = budget or default_memory_budget(x.device)
    r = min(K, x[0].numel())
    per_sample = activation_bytes(encoder, x[:1]) * (1 + 2 * probes) + 16 * r * probes * steps
    return max(1, min(x.shape[0], budget // max(1, per_sample)))


def score_dataset(
    encoder: nn.Module,
    inputs: torch.Tensor,
    *,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    progress: bool = True,
    desc: str = "JEPA-SCORE",
    **options,
) -> np.ndarray:
    """JEPA-SCORE (N,) of a whole dataset of inputs (N, ...), batch by batch with a progress bar.

    device: where to compute (None: where the encoder is; "auto": CUDA when present). Small batches
    are the fastest on a CPU (8 images: 23 ms per image for the book's small CNN against 33 ms with
    32); on a GPU, larger ones pay off. desc: the progress bar's label; options go to `jepa_score`.
    """
    if device is not None:
        encoder = encoder.to(resolve_device(device))
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    target = next(encoder.parameters()).device
    starts = range(0, len(inputs), batch_size)
    parts = [
        jepa_score(encoder, inputs[i : i + batch_size].to(target), chunk_size=batch_size, **options)
        .cpu()
        .numpy()
        for i in tqdm(starts, disable=not progress, desc=desc, leave=False)
    ]
    return np.concatenate(parts) if parts else np.zeros(0)


def _score(model, encoder, x, *, eps, mode, chunk, block, budget, precision) -> torch.Tensor:
    """(B,) scores of x (B, ...), chunk by chunk."""
    with (
        eval_mode(model),
        frozen_parameters(model),
        matmul_precision(precision),
        torch.enable_grad(),
    ):
        plan = plan_for(encoder, x, mode=mode, memory_budget=budget)
        chunk, block = chunk or plan.chunk, block or plan.block
        scores = []
        for start in range(0, x.shape[0], chunk):
            J = jacobian_rows(encoder, x[start : start + chunk], plan.K, mode=mode, block=block)
            G = gram(J)
            del J
            _check_finite(G, start)  # non-finite iff J is; checking J itself would copy it twice
            scores.append(half_logdet(G, eps))
    return torch.cat(scores).detach()


def plan_for(
    encoder: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    *,
    mode: Mode = "auto",
    memory_budget: int | None = None,
) -> Plan:
    """The chunk and block sizes `jepa_score` uses for this encoder and batch (B, ...) (B, K) output."""
    K = _embedding_width(encoder, x[:1])
    D = x[0].numel()
    forward = mode == "forward" or (mode == "auto" and D < K)
    return plan_blocks(
        x.shape[0],
        K,
        D,
        itemsize=x.element_size(),
        activation=activation_bytes(encoder, x[:1]),
        budget=memory_budget or default_memory_budget(x.device),
        device_type=x.device.type,
        forward=forward,
    )


def default_memory_budget(device: torch.device) -> int:
    """1 GiB on a CPU; half of the currently free memory on a CUDA device."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 2
    return DEFAULT_MEMORY_BUDGET


def logmeanexp(values: torch.Tensor, dim: int) -> torch.Tensor:
    """log mean exp along `dim`, computed stably."""
    return torch.logsumexp(values, dim) - math.log(values.shape[dim])


def _pooled(model: Callable, pool: Pool | None) -> Callable[[torch.Tensor], torch.Tensor]:
    def encoder(x: torch.Tensor) -> torch.Tensor:
        out = model(x)
        if not isinstance(out, torch.Tensor):
            raise TypeError(
                f"model: expected a tensor output of shape (B, K), got {type(out).__name__}; "
                "wrap the model so that it returns the embedding, e.g. lambda x: model(x)[0]"
            )
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


def _check_inputs(
    model: Callable,
    x: torch.Tensor,
    eps: float,
    pool: str | None,
    mode: str,
    chunk_size: int | None,
    block_size: int | None,
    memory_budget: int | None,
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
    _check_dtype(model, x)
    if pool not in (None, "mean", "first"):
        raise ValueError(f"pool: expected None, 'mean' or 'first', got {pool!r}")
    if mode not in ("auto", "reverse", "forward"):
        raise ValueError(f"mode: expected 'auto', 'reverse' or 'forward', got {mode!r}")
    for name, value in [("chunk_size", chunk_size), ("block_size", block_size)]:
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name}: expected a positive integer or None, got {value!r}")
    if memory_budget is not None and (not isinstance(memory_budget, int) or memory_budget < 1):
        raise ValueError(
            f"memory_budget: expected a positive number of bytes, got {memory_budget!r}"
        )


def _check_dtype(model: Callable, x: torch.Tensor) -> None:
    """TypeError when x's dtype differs from the model's floating-point parameters."""
    params = model.parameters() if isinstance(model, nn.Module) else ()
    dtype = next((p.dtype for p in params if p.is_floating_point()), x.dtype)
    if dtype != x.dtype:
        raise TypeError(
            f"x: dtype {x.dtype} does not match the model's parameters ({dtype}); "
            f"convert one of them, e.g. x.to({dtype}) or model.to({x.dtype})"
        )


def _check_method(method: str, probes, steps, seed) -> None:
    if method not in ("exact", "approx"):
        raise ValueError(f"method: expected 'exact' or 'approx', got {method!r}")
    for name, value in [("probes", probes), ("steps", steps)]:
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value < 1
        ):
            raise ValueError(f"{name}: expected a positive integer or None, got {value!r}")
        if value is not None and method == "exact":
            raise ValueError(f"{name}: only used with method='approx' (got method='exact')")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed: expected an integer, got {seed!r}")


def _check_approx_options(options: dict) -> None:
    """ValueError naming an exact-only option given a non-default value with method='approx'."""
    defaults = {"mode": "auto", "block_size": None, "precision": "float32", "augment": None,
                "n_views": 1}  # fmt: skip
    for name, value in options.items():
        if name not in defaults:
            raise TypeError(f"{name}: unexpected keyword argument")
        if value != defaults[name]:
            raise ValueError(
                f"{name}: not supported with method='approx' (got {value!r}); use method='exact'"
            )


def _check_views(augment: Callable | None, n_views: int) -> None:
    if not isinstance(n_views, int) or n_views < 1:
        raise ValueError(f"n_views: expected a positive integer, got {n_views!r}")
    if augment is None and n_views > 1:
        raise ValueError(f"augment: n_views={n_views} needs a view function augment(x) -> x'")
    if augment is not None and not callable(augment):
        raise TypeError(f"augment: expected a callable (B, ...) -> (B, ...), got {augment!r}")


def _check_finite(G: torch.Tensor, offset: int) -> None:
    """FloatingPointError naming the first sample whose Jacobian (Gram matrix) (B, r, r) is not finite."""
    bad = ~torch.isfinite(G).flatten(1).all(1)
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


@contextlib.contextmanager
def frozen_parameters(model: Callable) -> Iterator[None]:
    """No parameter requires grad during the call (autograd then saves nothing for weight gradients)."""
    params = list(model.parameters()) if isinstance(model, nn.Module) else []
    flags = [p.requires_grad for p in params]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(params, flags, strict=True):
            p.requires_grad_(flag)
