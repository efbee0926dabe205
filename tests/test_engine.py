"""The JEPA-SCORE engine's parts: block sizes, the Gram log-determinant, plans, views, precision."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from jepabook import jepa_score, reference_jepa_score
from jepabook.jacobian import activation_bytes, jacobian_blocks, jacobian_rows, plan_blocks
from jepabook.logdet import gram, half_logdet, logdet_from_jacobian
from jepabook.models import MLP, SmallCNN, TinyViT
from jepabook.score import frozen_parameters, logmeanexp, plan_for

CUDA = torch.cuda.is_available()


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return float(((a - b).abs() / b.abs().clamp_min(1e-12)).max())


def _vit() -> nn.Module:
    torch.manual_seed(0)
    return TinyViT(image_size=12, patch_size=4, dim=16, heads=2, out_dim=12).eval()


# Jacobian blocks -------------------------------------------------------------------------------


@pytest.mark.parametrize("block", [1, 5, 12, 40])
@pytest.mark.parametrize("mode", ["reverse", "forward"])
def test_every_block_size_gives_the_same_jacobian(block, mode):
    model = _vit()
    x = torch.randn(3, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    one = jacobian_rows(model, x, 12, mode=mode, block=1)
    blocked = jacobian_rows(model, x, 12, mode=mode, block=block)
    torch.testing.assert_close(blocked, one, rtol=1e-5, atol=1e-6)
    exact = torch.stack(
        [torch.autograd.functional.jacobian(model, x[i : i + 1])[0, :, 0] for i in range(3)]
    )
    torch.testing.assert_close(one, exact.reshape(3, 12, 144), rtol=1e-5, atol=1e-6)


def test_blocks_cover_every_row_once():
    model = MLP(5, 7, hidden=8, depth=2).eval()
    x = torch.randn(2, 5)
    starts = [(s, part.shape) for s, part in jacobian_blocks(model, x, 7, block=3, forward=False)]
    assert starts == [(0, (3, 2, 5)), (3, (3, 2, 5)), (6, (1, 2, 5))]
    starts = [(s, part.shape) for s, part in jacobian_blocks(model, x, 7, block=2, forward=True)]
    assert starts == [(0, (2, 2, 7)), (2, (2, 2, 7)), (4, (1, 2, 7))]


# Gram log-determinant --------------------------------------------------------------------------


@pytest.mark.parametrize(("K", "D"), [(4, 50), (50, 4), (6, 6)])
def test_gram_of_slabs_equals_the_product(K, D):
    J = torch.randn(3, K, D, generator=torch.Generator().manual_seed(K + D))
    wide = (
        J.double() @ J.double().transpose(1, 2)
        if K <= D
        else J.double().transpose(1, 2) @ J.double()
    )
    torch.testing.assert_close(gram(J, slab_bytes=8 * 3 * min(K, D) * 7), wide)  # slabs of 7


def test_cholesky_path_matches_svd_and_the_rank_deficient_path_clips():
    g = torch.Generator().manual_seed(2)
    full = torch.randn(2, 5, 9, generator=g, dtype=torch.float64)
    low = torch.randn(1, 5, 2, generator=g, dtype=torch.float64) @ torch.randn(
        1, 2, 9, generator=g, dtype=torch.float64
    )
    J = torch.cat([full, low])
    sigma = torch.linalg.svdvals(J)
    expected = sigma.clamp(min=1e-6).log().sum(-1)
    expected[2] = sigma[2, :2].log().sum() + 3 * math.log(1e-6)
    torch.testing.assert_close(logdet_from_jacobian(J, 1e-6), expected, rtol=1e-9, atol=1e-9)


def test_certificate_sends_a_small_but_positive_singular_value_to_the_clip():
    # sigma = (1, 1e-7): Cholesky succeeds, but sigma_min < eps must still be clipped to eps
    G = torch.diag(torch.tensor([1.0, 1e-14], dtype=torch.float64)).unsqueeze(0)
    assert torch.linalg.cholesky_ex(G).info.item() == 0
    torch.testing.assert_close(
        half_logdet(G, 1e-6), torch.tensor([math.log(1e-6)], dtype=torch.float64)
    )
    torch.testing.assert_close(
        half_logdet(G, 1e-8),
        torch.tensor([math.log(1e-7)], dtype=torch.float64),
        rtol=1e-9,
        atol=1e-9,
    )


# Plans -----------------------------------------------------------------------------------------


def test_activation_bytes_counts_what_one_sample_saves():
    lin = nn.Linear(100, 50, bias=False)
    lin.requires_grad_(False)
    # a linear map saves its input for nothing when the weight needs no grad; tanh saves its output
    model = nn.Sequential(lin, nn.Tanh())
    assert activation_bytes(model, torch.randn(1, 100)) == 50 * 4


def test_plans_respect_the_budget_and_the_device():
    args = dict(K=384, D=150528, itemsize=4, activation=55 << 20)
    cpu = plan_blocks(4, **args, budget=1 << 30, device_type="cpu", forward=False)
    # the budget holds 3 samples' Jacobians: 2 balanced chunks of 2, each pass well over 16 MiB
    assert (cpu.chunk, cpu.block) == (2, 1) and cpu.peak_bytes() <= 1 << 30
    thin = plan_blocks(
        1,
        K=384,
        D=37632,
        itemsize=4,
        activation=10 << 20,
        budget=1 << 30,
        device_type="cpu",
        forward=False,
    )
    assert (thin.chunk, thin.block) == (1, 2)  # one 10 MiB sample: blocks of 2 make up 16 MiB
    cnn = plan_blocks(
        256,
        K=64,
        D=784,
        itemsize=4,
        activation=320 << 10,
        budget=1 << 30,
        device_type="cpu",
        forward=False,
    )
    assert (cnn.chunk, cnn.block) == (43, 1)  # 51 samples carry 16 MiB; 6 balanced chunks
    cuda = plan_blocks(8, **args, budget=64 << 30, device_type="cuda", forward=False)
    assert cuda.chunk == 8 and cuda.block > 8 and cuda.peak_bytes() <= 64 << 30
    tight = plan_blocks(8, **args, budget=2 << 30, device_type="cuda", forward=False)
    assert tight.peak_bytes() <= 2 << 30 and tight.chunk < 8
    small = plan_blocks(
        256,
        K=64,
        D=16,
        itemsize=4,
        activation=2048,
        budget=1 << 30,
        device_type="cpu",
        forward=True,
    )
    assert (small.chunk, small.block) == (256, 16)


def test_plan_for_a_real_encoder_and_scores_with_any_sizes_agree():
    model = SmallCNN(1, 16, width=8).eval()
    x = torch.rand(10, 1, 12, 12, generator=torch.Generator().manual_seed(3))
    with frozen_parameters(model):
        plan = plan_for(model, x)
    assert (plan.K, plan.D, plan.forward) == (16, 144, False)
    base = jepa_score(model, x)
    for chunk, block in [(1, 1), (3, 4), (10, 16), (4, 100)]:
        assert relative_error(jepa_score(model, x, chunk_size=chunk, block_size=block), base) < 1e-6


def test_parameters_are_frozen_only_during_the_call():
    model = MLP(4, 4)
    next(model.parameters()).requires_grad_(False)
    before = [p.requires_grad for p in model.parameters()]
    jepa_score(model, torch.randn(2, 4))
    assert [p.requires_grad for p in model.parameters()] == before


# Multi-view estimator --------------------------------------------------------------------------


def test_multiview_is_minus_logmeanexp_of_minus_the_view_scores():
    model = MLP(6, 8, hidden=16, depth=2).eval()
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(4))
    shifts = iter([0.1, -0.2, 0.3])

    def augment(z: torch.Tensor) -> torch.Tensor:
        return z + next(shifts)

    ours = jepa_score(model, x, augment=augment, n_views=3)
    views = torch.stack([jepa_score(model, x + s) for s in (0.1, -0.2, 0.3)])
    expected = -torch.log(torch.exp(-views).mean(0))
    torch.testing.assert_close(ours, expected)
    assert torch.all(ours <= views.mean(0) + 1e-12)  # Jensen: below the mean of the scores


def test_logmeanexp_is_stable():
    values = torch.tensor([[1000.0, 1000.0], [-1000.0, 1000.0]], dtype=torch.float64)
    torch.testing.assert_close(
        logmeanexp(values, 0), torch.tensor([1000.0 - math.log(2), 1000.0], dtype=torch.float64)
    )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_views": 3}, "augment"),
        ({"augment": lambda z: z, "n_views": 0}, "n_views"),
        ({"augment": "flip", "n_views": 2}, "augment"),
        ({"block_size": 0}, "block_size"),
        ({"memory_budget": -5}, "memory_budget"),
        ({"precision": "fp8"}, "precision"),
    ],
)
def test_bad_engine_options_name_the_argument(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        jepa_score(MLP(4, 4), torch.randn(2, 4), **kwargs)


@pytest.mark.skipif(CUDA, reason="checks the message given on a machine without CUDA")
def test_reduced_precision_asks_for_cuda():
    with pytest.raises(ValueError, match="precision: 'bf16' is for CUDA"):
        jepa_score(MLP(4, 4), torch.randn(2, 4), precision="bf16")


# On a GPU (run on the lent device; skipped where there is none) ---------------------------------


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_agrees_with_cpu_and_the_listing():
    model = _vit()
    x = torch.randn(6, 1, 12, 12, generator=torch.Generator().manual_seed(5))
    cpu = jepa_score(model, x)
    gpu = jepa_score(model.cuda(), x.cuda())
    assert gpu.device.type == "cuda"
    assert relative_error(gpu, cpu) < 1e-5
    assert relative_error(gpu, reference_jepa_score(model, x.cuda())) < 1e-5


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize(("precision", "tolerance"), [("tf32", 1e-2), ("bf16", 1e-1)])
def test_cuda_reduced_precision_is_close(precision, tolerance):
    model = _vit().cuda()
    x = torch.randn(6, 1, 12, 12, generator=torch.Generator().manual_seed(6)).cuda()
    exact = jepa_score(model, x)
    reduced = jepa_score(model, x, precision=precision)
    assert relative_error(reduced, exact) < tolerance


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_memory_stays_within_the_budget():
    torch.manual_seed(7)
    model = TinyViT(image_size=32, patch_size=4, dim=64, heads=4, out_dim=64).cuda().eval()
    x = torch.randn(32, 1, 32, 32, device="cuda")
    budget = 64 << 20
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    scores = jepa_score(model, x, memory_budget=budget)
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - before <= budget
    assert relative_error(scores, jepa_score(model, x)) < 1e-6
    assert torch.isfinite(scores).all()
