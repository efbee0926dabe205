"""Per-sample input Jacobians of a batch-wise encoder, in blocks sized to a memory budget.

Reverse mode (K <= D): one forward pass keeps the graph; then blocks of `block` basis vectors e_k
are pulled back at once (one backward pass with batched cotangents, `is_grads_batched`, which
vmaps the backward), each block giving rows k of every sample's Jacobian. A block of one is a plain
backward pass. Forward mode (D < K) does the same with columns: Jacobian-vector products
(`torch.func.jvp`, vmapped over blocks of basis inputs).

`plan_blocks` chooses the samples per chunk and the basis vectors per block: enough work per pass to
keep the device busy (`PASS_BYTES`), and within the memory budget the Jacobians of one chunk, its
forward graph and one block's backward. The graph's size is measured, not guessed:
`activation_bytes` counts the tensors autograd saves for one sample.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch.func import jvp, vmap

# Rows (samples x basis vectors) one pass should carry: about PASS_BYTES of saved activations, so
# that its fixed cost (Python, kernel launches, thin matrix products) is small next to its work; more
# only costs memory. A GPU fills only with hundreds of rows per pass: whole batches, then blocks of
# basis vectors. On a CPU, chunks of samples come first (at least MIN_SAMPLES when the budget allows)
# and blocks only make up a chunk that carries too few bytes. Measured on 2 CPU cores (plain passes
# unless said): the 28 px CNN at batch 256, 64 products in 2.5 s over chunks of 43 (16 MiB), 3.2 s
# over the whole batch, 4.5 s in blocks of 16; a ViT-S/14 at 112 px, batch 4: 89 s over single
# samples, 56 s over single samples in blocks of 16, 54 s over chunks of 4; at 224 px, batch 4: 227 s
# over chunks of 2, 226 s over 4, 254 s over chunks of 2 in blocks of 2.
# The rule checked on another CPU (2-core AMD EPYC, Zen 4, 1 thread, medians of 3 or 5): the 28 px
# CNN at batch 256, chunks of 43, 64 (the plan) and 128 within 7% of each other (6.3-6.7 s); at
# batch 64, chunks of 32 and 64 (the plan) at the floor, chunks of 16 and 8 22% and 35% slower. With
# 2 threads while another job held one core, one call's time varied tenfold (0.8-14 s): the 1.2x
# over the floor once reported there most likely came from such single timings.
# Forward mode (D < K, so D is small) takes all D tangents in one vmapped pass: one call of
# `torch.func.jvp` costs more than a backward pass (an MLP at batch 256 on a CPU: 16 single
# tangents 91 ms, one block of 16 30 ms, the listing's 64 backward passes 86 ms).
PASS_BYTES = {"cpu": 16 << 20, "cuda": 16 << 30}
MIN_SAMPLES = {"cpu": 4, "cuda": 1}
WHOLE_BATCH_DEVICES = ("cuda",)


@dataclass(frozen=True)
class Plan:
    """How `jepa_score` walks a batch: `chunk` samples at a time, `block` basis vectors per product."""

    chunk: int
    block: int
    forward: bool
    K: int
    D: int
    itemsize: int
    activation_bytes: int

    def peak_bytes(self) -> int:
        """Estimated bytes held at once: a chunk's Jacobians and graph plus one block's backward."""
        jacobian = self.K * self.D * self.itemsize
        return self.chunk * (jacobian + self.activation_bytes * (1 + self.block))


def activation_bytes(encoder: Callable[[torch.Tensor], torch.Tensor], x1: torch.Tensor) -> int:
    """Bytes autograd saves per sample for a backward pass of `encoder` (from 1 and 2 samples).

    Args:
        encoder: maps (B, ...) to (B, K).
        x1: one sample (1, ...).

    Returns:
        the difference between the saved bytes of a 2-sample and a 1-sample forward pass
        (parameters saved for backward cancel out), each storage counted once.
    """
    return max(0, _saved_bytes(encoder, x1.expand(2, *x1.shape[1:])) - _saved_bytes(encoder, x1))


def _saved_bytes(encoder: Callable, x: torch.Tensor) -> int:
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    x = x.detach().clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        encoder(x)
    return sum(storages.values())


def plan_blocks(
    B: int,
    K: int,
    D: int,
    *,
    itemsize: int,
    activation: int,
    budget: int,
    device_type: str,
    forward: bool,
) -> Plan:
    """Samples per chunk and basis vectors per block for one batch.

    A pass should carry `rows` sample-rows, `PASS_BYTES` of saved activations. On a CPU a chunk
    holds that many samples, at least `MIN_SAMPLES`, when the budget allows (a chunk's Jacobians are
    held whole to form its Gram matrices); on a GPU as many as the budget allows. Blocks of basis
    vectors then make up the rows a chunk lacks, within the memory that is left. Chunks are balanced.

    Args:
        B, K, D: batch size, embedding width, input size.
        itemsize: bytes per Jacobian entry.
        activation: bytes saved per sample by one forward pass (`activation_bytes`).
        budget: bytes.
        device_type: "cpu", "cuda", ...; sets the work per pass and whether to block.
        forward: Jacobian-vector products (D basis inputs) instead of vector-Jacobian (K).
    """
    jacobian = K * D * itemsize
    device = device_type if device_type in PASS_BYTES else "cpu"
    rows = max(1, PASS_BYTES[device] // max(1, activation))
    fit = max(1, budget // (jacobian + 2 * activation))
    whole = device in WHOLE_BATCH_DEVICES and not forward
    most = min(B, fit) if whole else min(B, fit, max(MIN_SAMPLES[device], rows))
    chunk = -(-B // -(-B // most))  # the same number of chunks, as even as possible
    by_memory = (budget - chunk * (jacobian + activation)) // max(1, chunk * activation)
    wanted = D if forward else round(PASS_BYTES[device] / max(1, most * activation))
    block = max(1, min(D if forward else K, wanted, by_memory))
    return Plan(chunk, block, forward, K, D, itemsize, activation)


def jacobian_rows(
    encoder: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    K: int,
    *,
    mode: str = "auto",
    block: int = 1,
) -> torch.Tensor:
    """Per-sample Jacobians of a batch-wise encoder.

    Args:
        encoder: maps (B, ...) to (B, K) with no interaction between samples.
        x: inputs (B, ...).
        K: embedding width.
        mode: "reverse" (K vector-Jacobian products), "forward" (D Jacobian-vector products) or
            "auto" (reverse when K <= D).
        block: basis vectors per batched product.

    Returns:
        (B, K, D) Jacobians, D = prod(x.shape[1:]), in the encoder output's dtype.
    """
    B, D = x.shape[0], x[0].numel()
    forward = mode == "forward" or (mode == "auto" and D < K)
    J = None
    for start, part in jacobian_blocks(encoder, x, K, block=block, forward=forward):
        if J is None:
            J = torch.empty(B, K, D, dtype=part.dtype, device=part.device)
        if forward:
            J[:, :, start : start + part.shape[0]] = part.permute(1, 2, 0)
        else:
            J[:, start : start + part.shape[0]] = part.transpose(0, 1)
    return J


def jacobian_blocks(
    encoder: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    K: int,
    *,
    block: int,
    forward: bool,
) -> Iterator[tuple[int, torch.Tensor]]:
    """The Jacobian products one block at a time: the work of any exact method, nothing stored.

    Yields:
        (start, part): reverse mode, rows start.. of every Jacobian as (n, B, D);
        forward mode, columns start.. as (n, B, K).
    """
    x = x.detach()
    if forward:
        yield from _forward_blocks(encoder, x, K, block)
    else:
        yield from _reverse_blocks(encoder, x, K, block)


def _basis(start: int, n: int, width: int, like: torch.Tensor) -> torch.Tensor:
    """(n, width) rows start..start+n-1 of the identity, built without the full identity."""
    rows = torch.zeros(n, width, dtype=like.dtype, device=like.device)
    rows[torch.arange(n), torch.arange(start, start + n)] = 1
    return rows


def _reverse_blocks(encoder: Callable, x: torch.Tensor, K: int, block: int) -> Iterator:
    B, D = x.shape[0], x[0].numel()
    x = x.requires_grad_(True)
    out = encoder(x)
    _check_batch(out.shape, B, K)
    for start in range(0, K, block):
        n = min(block, K - start)
        basis = _basis(start, n, K, out).unsqueeze(1).expand(n, B, K)
        yield start, _pull(out, x, basis, keep=start + n < K).reshape(n, B, D)


def _pull(out: torch.Tensor, x: torch.Tensor, basis: torch.Tensor, keep: bool) -> torch.Tensor:
    """(n, B, ...) vector-Jacobian products of n cotangents (n, B, K), in one batched backward
    pass (a loop where an op has no batching rule); `keep` retains the graph for later blocks."""
    if basis.shape[0] == 1:
        return torch.autograd.grad(out, x, basis[0], retain_graph=keep)[0].unsqueeze(0)
    try:
        grad = torch.autograd.grad(out, x, basis, retain_graph=True, is_grads_batched=True)
        return grad[0]
    except (RuntimeError, NotImplementedError):
        return torch.stack([torch.autograd.grad(out, x, v, retain_graph=True)[0] for v in basis])


def _forward_blocks(encoder: Callable, x: torch.Tensor, K: int, block: int) -> Iterator:
    B, D = x.shape[0], x[0].numel()
    for start in range(0, D, block):
        n = min(block, D - start)
        tangents = _basis(start, n, D, x).reshape(n, 1, *x.shape[1:]).expand(n, *x.shape)
        if n == 1:
            columns = jvp(encoder, (x,), (tangents[0],))[1].unsqueeze(0)
        else:
            columns = vmap(lambda t: jvp(encoder, (x,), (t,))[1])(tangents)  # noqa: B023
        _check_batch(columns.shape[1:], B, K)
        yield start, columns


def _check_batch(shape: torch.Size, B: int, K: int) -> None:
    if tuple(shape) != (B, K):
        raise ValueError(
            f"model: batch mismatch: {B} input samples gave output of shape {tuple(shape)}, "
            f"expected ({B}, {K})"
        )
