"""Small encoders used in the book and the tests: an MLP, a whitening residual encoder, CNNs, a tiny ViT,
and a backbone + projector pair (the layout of LeJEPA: SIGReg on the projector, the probe on the backbone).

Every encoder maps a batch to embeddings without mixing samples in eval mode, so JEPA-SCORE's
batched Jacobian is valid.
"""

from __future__ import annotations

import math
from collections.abc import Callable

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


class ResidualBlock(nn.Module):
    """(B, C_in, H, W) -> (B, C_out, H / stride, W / stride): two 3x3 conv + BatchNorm, ReLU, a skip."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.skip = nn.Identity()
        if stride != 1 or cin != cout:
            self.skip = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class SmallResNet(nn.Module):
    """(B, C, H, W) -> (B, width * 2**(stages - 1)) ResNet-style backbone for small images (28, 32 px).

    A 3x3 stem (stride `stem_stride`), then `stages` stages of `blocks` residual blocks with width,
    2 width, 4 width, ... channels (every stage after the first halves the resolution), global mean
    pooling. The defaults (stride-2 stem, three stages of one block) are the book's small CPU
    backbone; stem_stride=1, stages=4, blocks=2 is the ResNet-18 layout for CIFAR (`resnet18_encoder`).
    BatchNorm: run it in eval mode (as JEPA-SCORE does) so that samples do not interact.
    """

    def __init__(
        self,
        in_channels: int = 1,
        width: int = 32,
        blocks: int = 1,
        *,
        stages: int = 3,
        stem_stride: int = 2,
    ):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, width, 3, stem_stride, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(),
        ]
        cin = width
        for stage in range(stages):
            cout = width * 2**stage
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(ResidualBlock(cin, cout, stride))
                cin = cout
        self.features = nn.Sequential(*layers)
        self.out_dim = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean((2, 3))


class Projector(nn.Sequential):
    """(B, F) -> (B, K): Linear, BatchNorm, ReLU, Linear; the output SIGReg makes Gaussian."""

    def __init__(self, in_dim: int, out_dim: int = 64, hidden: int = 256):
        super().__init__(
            nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, out_dim)
        )


class ProjectedEncoder(nn.Module):
    """(B, ...) -> (B, K): a backbone (B, ...) -> (B, F) followed by a projector (B, F) -> (B, K).

    The projector output is the Gaussianised embedding (what the theory covers and JEPA-SCORE
    differentiates by default); `backbone` alone gives the features a linear probe usually reads.
    """

    def __init__(self, backbone: nn.Module, projector: nn.Module):
        super().__init__()
        self.backbone, self.projector = backbone, projector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x))


def resnet_encoder(
    in_channels: int = 1, width: int = 32, blocks: int = 1, out_dim: int = 64, hidden: int = 256
) -> ProjectedEncoder:
    """SmallResNet backbone (B, C, H, W) -> (B, 4 width) + projector -> (B, out_dim)."""
    backbone = SmallResNet(in_channels, width, blocks)
    return ProjectedEncoder(backbone, Projector(backbone.out_dim, out_dim, hidden))


def resnet18_encoder(
    in_channels: int = 3, width: int = 64, out_dim: int = 64, hidden: int = 1024
) -> ProjectedEncoder:
    """ResNet-18 for 32 x 32 images (B, C, H, W) -> (B, 8 width) + projector -> (B, out_dim).

    He et al.'s 18-layer layout as CIFAR recipes use it: a stride-1 3x3 stem and no max-pool, four
    stages of two residual blocks (width 64: 64-128-256-512 channels, 11 M parameters; width 32 has
    a quarter of the parameters and the multiply-adds).
    """
    backbone = SmallResNet(in_channels, width, 2, stages=4, stem_stride=1)
    return ProjectedEncoder(backbone, Projector(backbone.out_dim, out_dim, hidden))


def vit_encoder(
    image_size: int = 28,
    patch_size: int = 4,
    in_channels: int = 1,
    dim: int = 96,
    depth: int = 4,
    heads: int = 4,
    out_dim: int = 64,
    hidden: int = 256,
) -> ProjectedEncoder:
    """TinyViT backbone (CLS token, B, C, H, W) -> (B, dim) + projector -> (B, out_dim)."""
    backbone = TinyViT(image_size, patch_size, in_channels, dim, depth, heads, out_dim=None)
    return ProjectedEncoder(backbone, Projector(dim, out_dim, hidden))


@torch.no_grad()
def calibrate_batchnorm(model: nn.Module, x: torch.Tensor, batch_size: int = 512) -> nn.Module:
    """Re-estimate every BatchNorm's running mean and variance on inputs x (N, ...), in place.

    A network with random weights has the running statistics of its initialisation (mean 0,
    variance 1), which scale its activations arbitrarily; this gives it those of the data, as
    training would. Returns `model` in eval mode.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches below
    model.train()
    for start in range(0, len(x), batch_size):
        model(x[start : start + batch_size])
    for norm in norms:
        norm.momentum = 0.1
    return model.eval()


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
        out_dim: K (a linear projection of the tokens), or None for the normalised tokens (K = dim).
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
        out_dim: int | None = 64,
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
        self.head = nn.Linear(dim, out_dim) if out_dim is not None else nn.Identity()
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


ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "cnn": SmallCNN,
    "vit": TinyViT,
    "resnet": resnet_encoder,
    "resnet18": resnet18_encoder,
    "vit-projected": vit_encoder,
}


def build_encoder(architecture: str, **kwargs) -> nn.Module:
    """An encoder of the book by name (a key of ARCHITECTURES) and its constructor arguments."""
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
