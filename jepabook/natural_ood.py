"""Out-of-domain sets at CIFAR-10's size (3 x 32 x 32, RGB, [0, 1]) and the ImageNet CNNs as
encoders of such pixels, for the natural-images chapter.

Sets (built from the loaders of `jepabook.datasets` and the photos bundled with scikit-image):
- real images of other domains: MNIST digits and Fashion-MNIST clothing (grey, repeated over the
  three channels), scikit-image's 100 faces (grey), colour crops of the Hubble Deep Field (galaxies),
  colour patches of natural photographs, and grey texture crops (brick, grass, gravel);
- synthetic shifts of held-out CIFAR-10 test images: Gaussian noise, Gaussian blur, JPEG at low
  quality and inversion (`shift`);
- the near shift: CIFAR-10 classes left out of what a detector is fitted on (`HELD_OUT_CLASSES`).

`PixelEncoder` makes any encoder a map of such pixels: (B, 3, 32, 32) in [0, 1] -> resize to the
chosen input side -> the network's own normalisation -> (B, K). JEPA-SCORE is then the Jacobian with
respect to the 32 x 32 CIFAR pixels (D = 3,072) whatever the input side.

`factorised_score` computes the same exact JEPA-SCORE faster when the network's last feature map is
1 x 1 (the ImageNet CNNs at 32 px): the 1,280 pooled features then depend on the image only through
the 320 channels before the last 1 x 1 convolution, so J = J_head J_trunk with 320 backward passes
instead of 1,280.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from jepabook import datasets
from jepabook.backbones import load_backbone
from jepabook.datasets import ImageSet
from jepabook.jacobian import jacobian_rows
from jepabook.logdet import logdet_from_jacobian
from jepabook.models import calibrate_batchnorm
from jepabook.score import eval_mode, frozen_parameters, jepa_score

SIZE = 32
HELD_OUT_CLASSES = ("dog", "truck")
"""The near shift: each has a close sibling left in distribution (cat, automobile)."""
SHIFTS = ("noise", "blur", "JPEG", "inverted")
TEXTURES = ("brick.png", "grass.png", "gravel.png")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALISATION = {
    "mobilenetv2-in1k": (IMAGENET_MEAN, IMAGENET_STD),
    "efficientnet-lite0-in1k": ((127 / 255,) * 3, (128 / 255,) * 3),
}
"""Per-channel (mean, std) of each ImageNet CNN's own preprocessing (`imagenet_cnns.preprocess`)."""


# ---------------------------------------------------------------- the sets


def rgb(images: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """(N, 1 or 3, h, w) in [0, 1] -> (N, 3, size, size): antialiased bilinear resize, grey
    repeated over the three channels."""
    if images.shape[-2:] != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
    return images.clamp(0, 1).expand(-1, 3, -1, -1).contiguous()


def _pick(images: ImageSet, n: int, seed: int) -> ImageSet:
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    return images.subset(order[:n])


def digits(n: int, seed: int = 0) -> ImageSet:
    """n random MNIST digits (N, 3, 32, 32)."""
    return ImageSet("MNIST digits", rgb(_pick(datasets.mnist_digits(), n, seed).images))


def clothing(n: int, seed: int = 0) -> ImageSet:
    """n random Fashion-MNIST test images (N, 3, 32, 32)."""
    return ImageSet("Fashion-MNIST", rgb(_pick(datasets.fashion_mnist("test"), n, seed).images))


def faces(n: int) -> ImageSet:
    """The first n (at most 100) faces of scikit-image's LFW subset (N, 3, 32, 32)."""
    return ImageSet("faces", rgb(datasets.faces(SIZE).images[:n]))


def _skimage_file(name: str) -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent / name


def _rgb_array(path: Path) -> np.ndarray:
    """A photo as an (H, W, 3) float32 array in [0, 1]."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), np.float32) / 255


def _crops(photos: list[np.ndarray], n: int, side: int, seed: int) -> torch.Tensor:
    """n square crops (side capped at the photo's short side) of photos chosen uniformly, at
    uniform positions, resized to (n, 3, 32, 32)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in rng.integers(len(photos), size=n):
        photo = photos[k]
        s = min(side, *photo.shape[:2])
        top = rng.integers(photo.shape[0] - s + 1)
        left = rng.integers(photo.shape[1] - s + 1)
        crop = torch.from_numpy(photo[top : top + s, left : left + s].copy()).permute(2, 0, 1)
        out.append(rgb(crop[None]))
    return torch.cat(out)


def galaxies(n: int, seed: int = 0) -> ImageSet:
    """n colour crops (64 px, resized to 32) of the Hubble eXtreme Deep Field (public domain)."""
    photo = _rgb_array(_skimage_file("hubble_deep_field.jpg"))
    return ImageSet("galaxies", _crops([photo], n, 2 * SIZE, seed))


def photo_patches(n: int, seed: int = 0) -> ImageSet:
    """n colour patches (128 px, resized to 32) of the photos of `datasets.natural_photo_paths`."""
    photos = [_rgb_array(p) for p in datasets.natural_photo_paths()]
    return ImageSet("photo patches", _crops(photos, n, 4 * SIZE, seed))


def textures(n: int, seed: int = 0) -> ImageSet:
    """n grey crops (128 px, resized to 32) of scikit-image's brick, grass and gravel textures."""
    photos = [_rgb_array(_skimage_file(name)) for name in TEXTURES]
    return ImageSet("textures", _crops(photos, n, 4 * SIZE, seed))


def shift(images: ImageSet, kind: str, seed: int = 0) -> ImageSet:
    """A shifted copy of RGB images (N, 3, H, W) in [0, 1]; labels kept.

    kind: "noise" (add N(0, 0.1^2) per pixel, clipped), "blur" (Gaussian, sigma 1 px), "JPEG"
    (re-encoded at quality 10) or "inverted" (1 - x).
    """
    if kind not in SHIFTS:
        raise ValueError(f"kind: expected one of {SHIFTS}, got {kind!r}")
    x = images.images
    if kind == "noise":
        generator = torch.Generator().manual_seed(seed)
        out = (x + 0.1 * torch.randn(x.shape, generator=generator)).clamp(0, 1)
    elif kind == "blur":
        out = _gaussian_blur(x, sigma=1.0)
    elif kind == "JPEG":
        out = torch.stack([_jpeg(image, quality=10) for image in x])
    else:
        out = 1 - x
    return ImageSet(f"{images.name}-{kind}", out.contiguous(), images.labels, images.classes)


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = int(np.ceil(2 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    c = x.shape[1]
    x = F.pad(x, (radius,) * 4, mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def _jpeg(image: torch.Tensor, quality: int) -> torch.Tensor:
    array = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    decoded = np.asarray(Image.open(buffer).convert("RGB"), np.float32) / 255
    return torch.from_numpy(decoded).permute(2, 0, 1)


def far_sets(base: ImageSet, n: int, seed: int = 0) -> dict[str, ImageSet]:
    """{name: ImageSet of (at most) n images}: six real out-of-domain sets and the four shifts of
    the first n images of `base` (held-out CIFAR-10 images that are not in the in-distribution
    sample)."""
    shifted = base.subset(slice(0, n))
    return {
        "MNIST digits": digits(n, seed),
        "Fashion-MNIST": clothing(n, seed),
        "faces": faces(n),
        "galaxies": galaxies(n, seed),
        "photo patches": photo_patches(n, seed),
        "textures": textures(n, seed),
        **{f"CIFAR, {kind}": shift(shifted, kind, seed) for kind in SHIFTS},
    }


def held_out_mask(images: ImageSet, held_out: tuple[str, ...] = HELD_OUT_CLASSES) -> np.ndarray:
    """(N,) bool: the images of the near-shift classes."""
    index = [images.classes.index(name) for name in held_out]
    return np.isin(images.labels.numpy(), index)


# ---------------------------------------------------------------- encoders of CIFAR pixels


class PixelEncoder(nn.Module):
    """(B, 3, 32, 32) pixels in [0, 1] -> (B, K): resize to `size`, normalise, encode."""

    def __init__(self, encoder: nn.Module, mean, std, size: int = SIZE):
        super().__init__()
        self.encoder, self.size = encoder, size
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 32, 32) pixels -> (B, 3, size, size) network inputs."""
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.prepare(x))


def imagenet_encoder(
    name: str,
    size: int = SIZE,
    *,
    pretrained: bool = True,
    calibrate: torch.Tensor | None = None,
    seed: int = 0,
) -> PixelEncoder:
    """An ImageNet CNN (`jepabook.backbones`) as a PixelEncoder at input side `size` (a multiple of
    32). pretrained=False: the same network with random weights (drawn after torch.manual_seed(seed))
    whose BatchNorm statistics are re-estimated on `calibrate` (N, 3, 32, 32) pixels, as training
    would set them (without it every Jacobian is nearly 0 and the score a constant)."""

    torch.manual_seed(seed)
    backbone = load_backbone(name, image_size=size, pretrained=pretrained)
    mean, std = NORMALISATION[name]
    encoder = PixelEncoder(backbone.encoder, mean, std, size)
    if not pretrained and calibrate is not None:
        with torch.no_grad():
            calibrate_batchnorm(encoder.encoder, encoder.prepare(calibrate))
    return encoder.eval()


def trained_encoder(trained) -> PixelEncoder:
    """A TrainedEncoder of `jepabook.image_jepa` (e.g. cifar10-cnn) as a PixelEncoder."""
    mean, std = float(trained.meta["mean"]), float(trained.meta["std"])
    channels = int(trained.meta.get("in_channels", 3))
    return PixelEncoder(trained.encoder, (mean,) * channels, (std,) * channels).eval()


def trunk_and_head(encoder: PixelEncoder) -> tuple[Callable, Callable] | None:
    """(trunk, head) with encoder(x) = head(trunk(x)) for the ImageNet CNNs: trunk (B, 3, 32, 32)
    -> (B, 320, h, w), the map before the last 1 x 1 convolution; head -> (B, 1280) pooled.
    None for other encoders."""
    model = getattr(encoder.encoder, "model", None)
    if model is None:
        return None
    if hasattr(model, "features"):  # torchvision MobileNetV2
        body, last = model.features[:-1], model.features[-1]

        def trunk(x):
            return body(encoder.prepare(x))

        def head(h):
            return last(h).mean((-2, -1))

        return trunk, head
    if hasattr(model, "_blocks"):  # EfficientNet-Lite

        def trunk(x):
            h = model._swish(model._bn0(model._conv_stem(encoder.prepare(x))))
            for block in model._blocks:
                h = block(h, drop_connect_rate=0.0)
            return h

        def head(h):
            return model._swish(model._bn1(model._conv_head(h))).mean((-2, -1))

        return trunk, head
    return None


def factorised_jacobian(encoder: PixelEncoder, x: torch.Tensor, *, block: int = 16) -> torch.Tensor:
    """(B, K, D) float64 Jacobians of pixels x (B, 3, 32, 32) as J_head(h) J_trunk(x), where h
    (B, C, h, w) is the trunk's output (`trunk_and_head`): C h w backward passes instead of K."""

    trunk, head = trunk_and_head(encoder)
    with torch.no_grad():
        h = trunk(x)
        K = head(h).shape[1]
    inner, shape = h[0].numel(), h.shape[1:]
    with eval_mode(encoder), frozen_parameters(encoder), torch.enable_grad():
        flat_trunk = lambda v: trunk(v).flatten(1)  # noqa: E731
        J_trunk = jacobian_rows(flat_trunk, x, inner, mode="reverse", block=block)
        flat_head = lambda v: head(v.view(-1, *shape))  # noqa: E731
        J_head = jacobian_rows(flat_head, h.flatten(1), K, mode="forward", block=inner)
    return (J_head.double() @ J_trunk.double()).detach()


def factorised_score(
    encoder: PixelEncoder, x: torch.Tensor, *, eps: float = 1e-6, block: int = 16
) -> torch.Tensor:
    """Exact JEPA-SCORE (B,) of pixels x (B, 3, 32, 32), as `jepa_score` gives it, from
    `factorised_jacobian` when the trunk's output has fewer entries than the embedding (the ImageNet
    CNNs at 32 px: 320 < K = 1,280); otherwise `jepa_score` itself."""

    K, passes = jacobian_sizes(encoder, x[:1])
    if passes >= K:
        return jepa_score(encoder, x, eps=eps)
    return logdet_from_jacobian(factorised_jacobian(encoder, x, block=block), eps)


def score_images(
    encoder: PixelEncoder, images: torch.Tensor, *, batch_size: int = 8, eps: float = 1e-6
) -> np.ndarray:
    """JEPA-SCORE (N,) of pixels (N, 3, 32, 32), batch by batch (`factorised_score`)."""
    device = next(encoder.parameters()).device
    parts = [
        factorised_score(encoder, images[i : i + batch_size].to(device), eps=eps).cpu().numpy()
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(parts) if parts else np.zeros(0)


def timed(
    score: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
) -> tuple[np.ndarray, float]:
    """(score(x) as a (B,) array, wall-clock seconds per image) for a batch x (B, ...)."""
    start = time.perf_counter()
    values = score(x).cpu().numpy()
    return values, (time.perf_counter() - start) / len(x)


def jacobian_sizes(encoder: PixelEncoder, x1: torch.Tensor) -> tuple[int, int]:
    """(K, backward passes per image `factorised_score` makes) for one input x1 (1, 3, 32, 32):
    the trunk's output size when it is below K, else K."""
    parts = trunk_and_head(encoder)
    with torch.no_grad():
        K = encoder(x1).shape[1]
        inner = K if parts is None else parts[0](x1)[0].numel()
    return K, min(K, inner)


def embeddings(encoder: PixelEncoder, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """(N, K) float64 embeddings of pixels (N, 3, 32, 32), in eval mode without gradients."""
    device = next(encoder.parameters()).device
    with torch.no_grad():
        parts = [
            encoder(images[i : i + batch_size].to(device)).cpu()
            for i in range(0, len(images), batch_size)
        ]
    return torch.cat(parts).double().numpy()


def pixel_statistics(images: torch.Tensor) -> dict[str, np.ndarray]:
    """Raw-pixel baselines (N,) of pixels (N, 3, H, W): mean brightness, contrast (pixel standard
    deviation) and smoothness (minus the mean absolute difference of neighbouring pixels)."""
    x = images.double()
    dx = (x[..., 1:] - x[..., :-1]).abs().mean((1, 2, 3))
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean((1, 2, 3))
    return {
        "brightness": x.mean((1, 2, 3)).numpy(),
        "contrast": x.std((1, 2, 3)).numpy(),
        "smoothness": -(dx + dy).numpy() / 2,
    }
