"""The approximate JEPA-SCORE (`jepabook.approx_score`, `jepa_score(method="approx")`)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from jepabook import jepa_score
from jepabook.approx_score import approx_jepa_score
from jepabook.score import jepa_score_with_error


class TanhMap(nn.Module):
    """x (B, D) -> tanh(W x) (B, K): Jacobian diag(1 - tanh^2) W, different for every sample."""

    def __init__(self, D: int, K: int, dead: int = 0, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        weight = torch.randn(K, D, generator=generator) / math.sqrt(D)
        weight[:dead] = 0  # exactly zero Jacobian rows (dead units)
        self.weight = nn.Parameter(weight.double())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ self.weight.T)


def inputs(B: int, D: int, seed: int = 1) -> torch.Tensor:
    """(B, D) float64 inputs at scales 0.5 .. 2: the larger the scale, the more saturated tanh,
    the lower the score. (float64 throughout: products A v in float32 cannot resolve the small
    singular values of the saturated samples, a limit the module docstring states.)"""
    generator = torch.Generator().manual_seed(seed)
    scales = torch.linspace(0.5, 2.0, B, dtype=torch.float64).unsqueeze(1)
    return torch.randn(B, D, generator=generator, dtype=torch.float64) * scales


def test_a_complete_krylov_space_gives_the_exact_score():
    model, x = TanhMap(40, 16), inputs(6, 40)
    exact = jepa_score(model, x)
    approx = jepa_score(model, x, method="approx", probes=4, steps=4)  # b s = K: all of R^K
    torch.testing.assert_close(approx, exact, rtol=1e-6, atol=1e-6)
    tall = TanhMap(10, 24)  # K > D: the approximation works on J^T J (10 x 10)
    x_tall = inputs(5, 10)
    approx_tall = jepa_score(tall, x_tall, method="approx", probes=5, steps=2)
    torch.testing.assert_close(approx_tall, jepa_score(tall, x_tall), rtol=1e-6, atol=1e-6)


def test_fewer_products_than_k_rank_samples_like_the_exact_score():
    model, x = TanhMap(96, 64), inputs(16, 96)
    exact = jepa_score(model, x)
    score, stderr = jepa_score_with_error(model, x, probes=4, steps=6)  # 24 of 64 products
    assert spearmanr(score, exact)[0] > 0.95
    relative = ((score - exact).abs() / exact.abs()).median()
    assert relative < 0.2, relative
    # Gauss quadrature over-estimates log at the small eigenvalues it cannot resolve: a bias upwards
    # that grows with the conditioning (module docstring), larger than the reported stderr
    assert (score - exact).mean() > stderr.mean()
    assert (stderr > 0).all() and (stderr < exact.std()).all()


def test_dead_units_are_split_off_exactly():
    model, x = TanhMap(48, 32, dead=10), inputs(6, 48)
    exact = jepa_score(model, x)
    approx = jepa_score(model, x, method="approx", probes=2, steps=11)  # b s = 22 live units
    torch.testing.assert_close(approx, exact, rtol=1e-6, atol=1e-6)
    assert (exact < 10 * math.log(1e-6) + 22 * 1.0).all()  # the 10 dead units weigh log(eps) each


class GatedTanh(TanhMap):
    """tanh(W x) with unit k switched off (an exactly zero Jacobian row) where x_k < threshold:
    every sample has its own number of dead units."""

    def __init__(self, D: int, K: int, threshold: torch.Tensor):
        super().__init__(D, K)
        self.threshold = threshold  # (B, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = x[:, : self.weight.shape[0]] >= self.threshold[: x.shape[0]]
        return torch.where(gate, torch.tanh(x @ self.weight.T), torch.zeros(()).double())


def test_samples_with_their_own_dead_units_do_not_depend_on_the_chunks():
    x = inputs(6, 48)
    threshold = torch.linspace(-3, 1, 6, dtype=torch.float64).unsqueeze(1).expand(6, 32)
    model = GatedTanh(48, 32, threshold.contiguous())
    exact = jepa_score(model, x)
    gated = (x[:, :32] < threshold).sum(1)
    assert gated.min() < 8 < gated.max()  # some samples have fewer live units than b s, some more
    whole = approx_jepa_score(model, x, 32, probes=4, steps=6, chunk_size=6)
    # chunks of one: each sample alone (the model's gate must see the right rows)
    single = [
        approx_jepa_score(
            GatedTanh(48, 32, threshold[i : i + 1].contiguous()), x[i : i + 1], 32,
            probes=4, steps=6, chunk_size=1,
        ).score
        for i in range(6)
    ]  # fmt: skip
    torch.testing.assert_close(whole.score, torch.cat(single), rtol=1e-9, atol=1e-9)
    few_live = 32 - gated <= 24  # computed exactly from the products of their live unit vectors
    torch.testing.assert_close(whole.score[few_live], exact[few_live], rtol=1e-6, atol=1e-6)


def test_same_seed_same_scores_and_the_seed_matters():
    model, x = TanhMap(96, 64), inputs(4, 96)
    a = jepa_score(model, x, method="approx", probes=4, steps=4, seed=3)
    b = jepa_score(model, x, method="approx", probes=4, steps=4, seed=3)
    c = jepa_score(model, x, method="approx", probes=4, steps=4, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_chunks_do_not_change_the_scores():
    model, x = TanhMap(96, 64), inputs(5, 96)
    whole = approx_jepa_score(model, x, 64, probes=4, steps=4, chunk_size=5)
    parts = approx_jepa_score(model, x, 64, probes=4, steps=4, chunk_size=2)
    torch.testing.assert_close(whole.score, parts.score, rtol=1e-9, atol=1e-9)
    assert whole.products == 4 * 4 + 1


def test_exact_method_reports_zero_error():
    model, x = TanhMap(40, 16), inputs(3, 40)
    score, stderr = jepa_score_with_error(model, x, method="exact")
    torch.testing.assert_close(score, jepa_score(model, x))
    assert (stderr == 0).all()


@pytest.mark.parametrize(
    "options, name",
    [
        ({"method": "bogus"}, "method"),
        ({"method": "approx", "probes": 0}, "probes"),
        ({"method": "approx", "steps": 2.5}, "steps"),
        ({"probes": 4}, "probes"),  # approximation options with the exact method
        ({"method": "approx", "block_size": 4}, "block_size"),
        ({"method": "approx", "mode": "forward"}, "mode"),
        ({"method": "approx", "seed": "a"}, "seed"),
    ],
)
def test_bad_arguments_name_the_argument(options, name):
    model, x = TanhMap(40, 16), inputs(2, 40)
    with pytest.raises(ValueError, match=name):
        jepa_score(model, x, **options)


class Attention(nn.Module):
    """x (B, T * d) -> mean over tokens of softmax attention (B, d), through
    F.scaled_dot_product_attention, whose fused CPU kernel has no forward-mode AD rule."""

    def __init__(self, T: int, d: int, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.T, self.d = T, d
        self.qkv = nn.Parameter(torch.randn(3, d, d, generator=generator) / math.sqrt(d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.view(x.shape[0], 1, self.T, self.d)
        q, k, v = (h @ w for w in self.qkv)
        return nn.functional.scaled_dot_product_attention(q, k, v).mean(2)[:, 0] + h.mean(2)[:, 0]


def test_attention_through_the_fused_kernel_is_differentiated_forward():
    model, x = Attention(T=4, d=8), torch.randn(3, 32)  # float32: the fused kernel's dtype
    exact = jepa_score(model, x)
    approx = jepa_score(model, x, method="approx", probes=4, steps=2)  # b s = K = 8: exact
    torch.testing.assert_close(approx, exact, rtol=1e-4, atol=1e-3)


def test_bench_summary_takes_the_best_setting_within_the_saving():
    from jepabook.chapters.scale import NUMERIC, bench_summary

    def row(method, saving, rho, wall=6.0, auroc=0.001):
        values = dict.fromkeys(NUMERIC, "1")
        values.update({"case": "c", "method": method, "K": "512", "inputs": "32"})
        values.update({"products exact/approx": str(saving), "Spearman": str(rho)})
        values.update({"wall exact/approx": str(wall), "AUROC (exact) or diff": str(auroc)})
        return values

    rows = [row("exact", 1, 1.0), row("approx b=8 s=8", 4, 0.999), row("approx b=4 s=2", 28, 0.9),
            row("approx b=4 s=4", 15, 0.95)]  # fmt: skip
    summary = bench_summary(pd.DataFrame(rows), saving=10).loc["c"]
    assert summary["best Spearman (any setting)"] == 0.999
    assert summary["best Spearman at >= 10x fewer products"] == 0.95
    assert summary["settings meeting the target"] == 0  # the cheap ones rank worse than 0.99
    met = [row("approx b=2 s=12", 10.2, 0.995), row("approx b=1 s=24", 10.2, 0.995, wall=4.0),
           row("approx b=2 s=8", 15, 0.995, auroc=-0.01)]  # fmt: skip
    summary = bench_summary(pd.DataFrame(rows + met), saving=10).loc["c"]
    assert summary["settings meeting the target"] == 1  # too slow, or AUROC too far, do not count
