"""Small encoders used in the book and the tests: an MLP, a whitening residual encoder, a CNN and a tiny ViT.

Every encoder maps a batch to embeddings without mixing samples in eval mode, so JEPA-SCORE's
batched Jacobian is valid.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class MLP(nn.Module):
    """(B, D) -> (B, K) multilayer perceptron with GELU activations.

    Args:
        in_dim: D.
        out_dim: K.
        hidden: width of each hidden layer.
        depth: number of hidden layers.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int = 128, depth: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(depth):
            layers += [nn.Linear(width, hidden), nn.GELU()]
            width = hidden
        layers.append(nn.Linear(width, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """(B, C, H, W) -> (B, K) convolutional encoder: three conv blocks, global mean pool, linear head.

    Args:
        in_channels: C.
        out_dim: K.
        width: channels of the first block (doubled in the second and third).
        norm: "batch" (BatchNorm: samples interact in train mode, so eval mode matters) or
            "group" (GroupNorm, per sample: the same map in train and eval mode).
    """

    def __init__(
        self, in_channels: int = 1, out_dim: int = 64, width: int = 32, norm: str = "batch"
    ):
        super().__init__()
        if norm not in ("batch", "group"):
            raise ValueError(f"norm: expected 'batch' or 'group', got {norm!r}")

        def block(cin: int, cout: int) -> nn.Sequential:
            normaliser = (
                nn.BatchNorm2d(cout) if norm == "batch" else nn.GroupNorm(math.gcd(8, cout), cout)
            )
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, padding=1), normaliser, nn.GELU(), nn.MaxPool2d(2)
            )

        self.features = nn.Sequential(
            block(in_channels, width), block(width, 2 * width), block(2 * width, 4 * width)
        )
        self.head = nn.Linear(4 * width, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean((2, 3)))


class ExplicitMultiheadAttention(nn.MultiheadAttention):
    """nn.MultiheadAttention that always takes the explicit softmax path (need_weights=True)."""

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):  # fmt: skip
        return super().forward(
            query, key, value, key_padding_mask=key_padding_mask, need_weights=True,
            attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal,
        )  # fmt: skip


def use_explicit_attention(module: nn.Module) -> nn.Module:
    """Switch every attention layer of `module` (timm or torch) off the fused kernel, in place."""
    for layer in module.modules():
        if hasattr(layer, "fused_attn"):  # timm's Attention
            layer.fused_attn = False
        elif type(layer) is nn.MultiheadAttention:  # open_clip's blocks
            layer.__class__ = ExplicitMultiheadAttention  # same parameters, another forward
    return module


class TinyViT(nn.Module):
    """(B, C, H, W) -> (B, K) (CLS token) or (B, N + 1, K) token outputs with `tokens=True`.

    Args:
        image_size: H = W.
        patch_size: side of a square patch.
        in_channels: C.
        dim: token width.
        depth: transformer blocks.
        heads: attention heads.
        out_dim: K (a linear projection of the tokens).
        tokens: return every token instead of the CLS token.
    """

    def __init__(
        self,
        image_size: int = 28,
        patch_size: int = 7,
        in_channels: int = 1,
        dim: int = 64,
        depth: int = 2,
        heads: int = 4,
        out_dim: int = 64,
        tokens: bool = False,
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(
                f"patch_size: expected a divisor of image_size={image_size}, got {patch_size}"
            )
        n_patches = (image_size // patch_size) ** 2
        self.patchify = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.position = nn.Parameter(0.02 * torch.randn(1, n_patches + 1, dim))
        layer = nn.TransformerEncoderLayer(
            dim, heads, 2 * dim, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        use_explicit_attention(
            self.blocks
        )  # the fused kernel has no vmap rule: JEPA-SCORE would loop
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, out_dim)
        self.tokens = tokens

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patchify(x).flatten(2).transpose(1, 2)  # (B, N, dim)
        cls = self.cls.expand(x.shape[0], -1, -1)
        h = self.blocks(torch.cat([cls, patches], 1) + self.position)
        out = self.head(self.norm(h))
        return out if self.tokens else out[:, 0]


class ResidualEncoder(nn.Module):
    """(B, D) -> (B, K): whiten, then a linear map plus a small residual MLP.

    f(x) = A u + g(u),  u = W (x - m),
    with m and W fixed from the training data (mean and inverse Cholesky factor of the covariance),
    A initialised to the identity (the first K coordinates; zero-padded when K > D) and the last layer
    of g scaled by `gain`. At initialisation f is (close to) the whitening map, an orientation-
    preserving bijection when K = D, so training starts unfolded; the whitening is affine, so it
    only shifts JEPA-SCORE by a constant.

    Args:
        mean: (D,) data mean m.
        whitening: (D, D) W.
        width: K.
        hidden, depth: of the residual MLP g.
        gain: scale of g's last layer at initialisation.
    """

    def __init__(
        self,
        mean: torch.Tensor,
        whitening: torch.Tensor,
        width: int,
        *,
        hidden: int = 128,
        depth: int = 3,
        gain: float = 0.1,
    ):
        super().__init__()
        dim = mean.shape[0]
        self.register_buffer("mean", mean.detach().clone().float())
        self.register_buffer("whitening", whitening.detach().clone().float())
        self.linear = nn.Linear(dim, width)
        self.residual = MLP(dim, width, hidden=hidden, depth=depth)
        with torch.no_grad():
            self.linear.weight.copy_(torch.eye(width, dim))
            self.linear.bias.zero_()
            self.residual.net[-1].weight.mul_(gain)
            self.residual.net[-1].bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = (x - self.mean.to(x.dtype)) @ self.whitening.to(x.dtype).T
        return self.linear(u) + self.residual(u)


ARCHITECTURES: dict[str, type[nn.Module]] = {"mlp": MLP, "cnn": SmallCNN, "vit": TinyViT}


def build_encoder(architecture: str, **kwargs) -> nn.Module:
    """An encoder of the book by name ("mlp", "cnn" or "vit") and its constructor arguments."""
    if architecture not in ARCHITECTURES:
        raise ValueError(
            f"architecture: expected one of {sorted(ARCHITECTURES)}, got {architecture!r}"
        )
    return ARCHITECTURES[architecture](**kwargs)


def whitening_of(data: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (D,) and whitening matrix W (D, D) (inverse Cholesky factor of the covariance) of data (N, D)."""
    data = data.double()
    covariance = torch.atleast_2d(torch.cov(data.T))
    covariance += 1e-6 * covariance.diagonal().mean() * torch.eye(data.shape[1], dtype=data.dtype)
    return data.mean(0), torch.linalg.inv(torch.linalg.cholesky(covariance))
