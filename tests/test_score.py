"""JEPA-SCORE against mathematics and against the paper's listing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from jepabook import jepa_score, reference_jepa_score
from jepabook.models import MLP, SmallCNN, TinyViT
from jepabook.score import score_dataset


class Linear(nn.Module):
    """f(x) = A x, float64."""

    def __init__(self, A: torch.Tensor):
        super().__init__()
        self.A = A

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.A.T


class Elementwise(nn.Module):
    """f(x)_i = sinh(x_i) + x_i, a bijection with Jacobian diag(cosh(x_i) + 1)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (torch.sinh(x) + x).flatten(1)


class Lambda(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double(), b.double()
    return float(((a - b).abs() / b.abs().clamp_min(1e-12)).max())


@pytest.mark.parametrize(("K", "D"), [(3, 7), (7, 3), (5, 5), (1, 4), (12, 2)])
@pytest.mark.parametrize("mode", ["auto", "reverse", "forward"])
def test_linear_map_scores_sum_of_log_singular_values(K, D, mode):
    g = torch.Generator().manual_seed(K * 10 + D)
    A = torch.randn(K, D, generator=g, dtype=torch.float64)
    x = torch.randn(4, D, generator=g, dtype=torch.float64)
    expected = np.log(np.linalg.svd(A.numpy(), compute_uv=False)).sum()
    scores = jepa_score(Linear(A), x, mode=mode)
    assert scores.shape == (4,)
    assert scores.dtype == torch.float64
    np.testing.assert_allclose(scores.numpy(), expected, rtol=1e-10, atol=1e-10)


def test_any_input_shape_is_flattened():
    g = torch.Generator().manual_seed(1)
    A = torch.randn(5, 2 * 3 * 4, generator=g, dtype=torch.float64)
    x = torch.randn(3, 2, 3, 4, generator=g, dtype=torch.float64)
    expected = np.log(np.linalg.svd(A.numpy(), compute_uv=False)).sum()
    np.testing.assert_allclose(jepa_score(Linear(A), x).numpy(), expected, rtol=1e-10)


def test_elementwise_bijection_matches_closed_form():
    x = torch.randn(6, 3, 4, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    expected = torch.log(torch.cosh(x) + 1).flatten(1).sum(1)
    torch.testing.assert_close(jepa_score(Elementwise(), x), expected, rtol=1e-12, atol=1e-12)


def _cnn() -> SmallCNN:
    torch.manual_seed(0)
    model = SmallCNN(in_channels=1, out_dim=16, width=8)
    for m in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


MODELS = {
    "mlp": (lambda: MLP(16, 24, hidden=32, depth=2), (16,)),
    "cnn": (_cnn, (1, 12, 12)),
    "vit": (lambda: TinyViT(image_size=12, patch_size=4, dim=16, heads=2, out_dim=12), (1, 12, 12)),
}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_agrees_with_reference_listing(name, batch):
    make, shape = MODELS[name]
    torch.manual_seed(batch)
    model = make().eval()
    x = torch.randn(batch, *shape)
    ours = jepa_score(model, x)
    reference = reference_jepa_score(model, x)
    assert relative_error(ours, reference) < 1e-4


def test_batch_independence_and_chunking():
    torch.manual_seed(3)
    model = MLP(6, 10, hidden=16, depth=2)
    x = torch.randn(7, 6, dtype=torch.float64)
    model = model.double()
    whole = jepa_score(model, x)
    one_by_one = torch.cat([jepa_score(model, x[i : i + 1]) for i in range(7)])
    chunked = jepa_score(model, x, chunk_size=3)
    torch.testing.assert_close(whole, one_by_one, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(whole, chunked, rtol=1e-12, atol=1e-12)
    tiny_budget = jepa_score(model, x, memory_budget=1)  # one sample per chunk
    torch.testing.assert_close(whole, tiny_budget, rtol=1e-12, atol=1e-12)


def test_eps_rule_on_rank_deficient_jacobian():
    g = torch.Generator().manual_seed(4)
    K, D, rank, eps = 6, 9, 3, 1e-6
    A = torch.randn(K, rank, generator=g, dtype=torch.float64) @ torch.randn(
        rank, D, generator=g, dtype=torch.float64
    )
    x = torch.randn(2, D, generator=g, dtype=torch.float64)
    sigma = np.linalg.svd(A.numpy(), compute_uv=False)[:rank]
    expected = np.log(sigma).sum() + (min(K, D) - rank) * math.log(eps)
    ours = jepa_score(Linear(A), x, eps=eps)
    np.testing.assert_allclose(ours.numpy(), expected, rtol=1e-8)
    np.testing.assert_allclose(
        reference_jepa_score(Linear(A), x, eps=eps).numpy(), expected, rtol=1e-8
    )
    larger_eps = jepa_score(Linear(A), x, eps=1e-3)
    assert torch.all(larger_eps > ours + 2 * (math.log(1e-3) - math.log(eps)) - 1e-6)


def test_puts_model_in_eval_mode_and_restores_each_module():
    model = _cnn()
    model.train()
    model.features[1].eval()  # a mixed state must come back as it was
    before = [m.training for m in model.modules()]
    x = torch.randn(4, 1, 12, 12, generator=torch.Generator().manual_seed(5))
    scores = jepa_score(model, x)
    assert [m.training for m in model.modules()] == before
    model.eval()
    torch.testing.assert_close(scores, jepa_score(model, x))
    alone = torch.cat([jepa_score(model, x[i : i + 1]) for i in range(4)])
    torch.testing.assert_close(scores, alone, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("pool", ["mean", "first"])
def test_token_outputs_are_pooled(pool):
    torch.manual_seed(6)
    vit = TinyViT(image_size=8, patch_size=4, dim=16, heads=2, out_dim=8, tokens=True).eval()
    x = torch.randn(3, 1, 8, 8)
    pooled = Lambda(lambda z: vit(z).mean(1) if pool == "mean" else vit(z)[:, 0])
    ours = jepa_score(vit, x, pool=pool)
    assert relative_error(ours, reference_jepa_score(pooled, x)) < 1e-4
    other = jepa_score(vit, x, pool="first" if pool == "mean" else "mean")
    assert relative_error(ours, other) > 1e-3  # the choice matters


def test_float32_and_float64_agree_on_a_smooth_model():
    torch.manual_seed(7)
    model = MLP(5, 5, hidden=16, depth=2)
    x = torch.randn(4, 5)
    single = jepa_score(model, x)
    double = jepa_score(model.double(), x.double())
    assert relative_error(single, double) < 1e-4


# Bad input -----------------------------------------------------------------------------------


def test_token_output_without_pool_is_an_error():
    vit = TinyViT(image_size=8, patch_size=4, dim=16, heads=2, out_dim=8, tokens=True)
    with pytest.raises(ValueError, match="pool="):
        jepa_score(vit, torch.randn(2, 1, 8, 8))


@pytest.mark.parametrize(
    "fn",
    [lambda z: z.sum(1), lambda z: z.reshape(z.shape[0], 1, 2, -1)],
    ids=["1-d output", "4-d output"],
)
def test_output_of_wrong_rank_is_an_error(fn):
    with pytest.raises(ValueError, match=r"model: expected output of shape \(B, K\)"):
        jepa_score(Lambda(fn), torch.randn(2, 4))


@pytest.mark.parametrize(
    "fn",
    [lambda z: z.sum(0, keepdim=True), lambda z: torch.cat([z, z])],
    ids=["batch summed", "batch repeated"],
)
def test_batch_mismatch_is_an_error(fn):
    with pytest.raises(ValueError, match="batch mismatch"):
        jepa_score(Lambda(fn), torch.randn(3, 4))


def test_non_finite_jacobian_names_the_sample():
    x = torch.rand(5, 3) + 0.5
    x[3, 1] = 0.0  # d sqrt(x)/dx is infinite at 0
    with pytest.raises(FloatingPointError, match="sample index 3"):
        jepa_score(Lambda(torch.sqrt), x, chunk_size=2)


def test_empty_batch_is_an_error():
    with pytest.raises(ValueError, match="x: expected a non-empty batch"):
        jepa_score(MLP(4, 4), torch.randn(0, 4))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"eps": 0.0}, "eps"),
        ({"pool": "max"}, "pool"),
        ({"mode": "sideways"}, "mode"),
        ({"chunk_size": 0}, "chunk_size"),
    ],
)
def test_bad_options_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jepa_score(MLP(4, 4), torch.randn(2, 4), **kwargs)


def test_non_tensor_and_non_float_inputs_are_errors():
    with pytest.raises(TypeError, match="x: expected a torch.Tensor"):
        jepa_score(MLP(4, 4), [[0.0] * 4])
    with pytest.raises(TypeError, match="floating-point"):
        jepa_score(MLP(4, 4), torch.ones(2, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="model: expected a callable"):
        jepa_score("encoder", torch.randn(2, 4))


def test_a_model_returning_a_tuple_or_dict_gets_a_named_error():
    net = MLP(4, 4)
    for wrapped in (lambda x: (net(x), x), lambda x: {"embedding": net(x)}):
        with pytest.raises(TypeError, match="model: expected a tensor output.*model\\(x\\)\\[0\\]"):
            jepa_score(wrapped, torch.randn(2, 4))
    assert jepa_score(lambda x: net(x), torch.randn(2, 4)).shape == (2,)


def test_an_input_dtype_other_than_the_models_gets_a_named_error():
    with pytest.raises(TypeError, match=r"x: dtype torch.float64 does not match .*torch.float32"):
        jepa_score(MLP(4, 4), torch.randn(2, 4, dtype=torch.float64))
    assert jepa_score(MLP(4, 4).double(), torch.randn(2, 4, dtype=torch.float64)).shape == (2,)


def test_score_dataset_matches_jepa_score_and_names_a_bad_batch_size():
    net, x = MLP(4, 3), torch.randn(5, 4)
    whole = jepa_score(net, x).numpy()
    np.testing.assert_allclose(
        score_dataset(net, x, batch_size=2, progress=False), whole, rtol=1e-6
    )
    with pytest.raises(ValueError, match="batch_size"):
        score_dataset(net, x, batch_size=0)
