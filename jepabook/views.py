"""Random views of images for JEPA training: resized crops, small rotations, flips, contrast, colour and noise.

Every view is drawn with an explicit torch.Generator, so a seed fixes a whole training run. The colour
options (saturation, channel gain, hue, grayscale) are for RGB images and default to off, as do the
extra brightness shift and the jitter probability (1: always); with them off, a view draws exactly the
random numbers it drew before they existed, so earlier runs replay unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights of R, G, B (torchvision's rgb_to_grayscale)
YIQ = (LUMA, (0.596, -0.274, -0.322), (0.211, -0.523, 0.312))
"""RGB -> YIQ (NTSC): luminance Y and two chroma axes I, Q; the chroma rows sum to 0 (gray has none)."""


class ImageViews(nn.Module):
    """(B, C, H, W) -> (B, C, H, W): one random affine view of each image, plus Gaussian noise.

    The view zooms into a random crop covering a fraction in [min_area, 1] of the image (aspect
    ratio in [3/4, 4/3]), rotates it by up to `degrees`, optionally flips it left-right, scales its
    contrast by a factor in [1 - contrast, 1 + contrast] and shifts its brightness by up to
    `contrast` (so that the amount of ink is not a shortcut), and adds noise of standard deviation
    `noise`. All in one batched `grid_sample` (bilinear; the border pixel, background for these
    images, fills what the rotation uncovers). `brightness` adds a second, independent shift of up
    to that many input units.

    Colour (C = 3 only; all off by default): the chroma (each pixel minus its luminance, BT.601
    weights) is scaled by a factor in [1 - saturation, 1 + saturation], each channel by its own
    factor in [1 - channel_gain, 1 + channel_gain] (a colour cast: hue and white balance shift), the
    chroma is rotated by an angle of up to `hue` turns in the I-Q plane of YIQ (a hue rotation that
    keeps the luminance), and with probability `grayscale` the view is replaced by its luminance in
    all three channels. With `jitter` < 1, contrast, brightness, saturation, channel gain and hue
    are applied to a view only with probability `jitter` (SimCLR's colour jitter: 0.8); grayscale
    and noise are drawn on their own. The inputs are normalised with one mean and standard deviation
    for all channels, an affine map that commutes with luminance, saturation and hue rotation (each
    maps gray to itself), so these act as they would on pixels; the channel gain scales each
    channel about the data set's mean colour.

    Args:
        min_area: smallest crop area as a fraction of the image.
        degrees: largest absolute rotation.
        flip: flip left-right with probability 1/2.
        noise: standard deviation of the additive noise (input units).
        contrast: largest relative change of contrast and brightness (0: none).
        saturation: largest relative change of the chroma (0: none; 1 allows full grayscale).
        channel_gain: largest relative change of each channel on its own (0: none).
        grayscale: probability of a grayscale view (0: never).
        brightness: largest extra brightness shift (input units; 0: none).
        hue: largest rotation of the chroma, in turns (0: none; 0.5: any hue).
        jitter: probability that a view gets the contrast, brightness and colour jitter (1: always).
    """

    def __init__(
        self,
        min_area: float = 0.5,
        degrees: float = 10.0,
        flip: bool = True,
        noise: float = 0.05,
        contrast: float = 0.0,
        saturation: float = 0.0,
        channel_gain: float = 0.0,
        grayscale: float = 0.0,
        *,
        brightness: float = 0.0,
        hue: float = 0.0,
        jitter: float = 1.0,
    ):
        super().__init__()
        if not 0 < min_area <= 1:
            raise ValueError(f"min_area: expected a fraction in (0, 1], got {min_area}")
        if degrees < 0 or noise < 0 or brightness < 0:
            raise ValueError(
                f"degrees, noise and brightness: expected >= 0, got {degrees}, {noise}, {brightness}"
            )
        if not 0 <= contrast < 1:
            raise ValueError(f"contrast: expected a fraction in [0, 1), got {contrast}")
        for name, value in (("saturation", saturation), ("channel_gain", channel_gain)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name}: expected a fraction in [0, 1], got {value}")
        if not 0 <= hue <= 0.5:
            raise ValueError(f"hue: expected a fraction of a turn in [0, 0.5], got {hue}")
        for name, value in (("grayscale", grayscale), ("jitter", jitter)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name}: expected a probability in [0, 1], got {value}")
        self.min_area, self.degrees, self.flip, self.noise = min_area, degrees, flip, noise
        self.contrast, self.brightness, self.jitter = contrast, brightness, jitter
        self.saturation, self.channel_gain, self.grayscale = saturation, channel_gain, grayscale
        self.hue = hue

    @property
    def colour(self) -> bool:
        """Whether any colour option is on (those need RGB images)."""
        return self.saturation > 0 or self.channel_gain > 0 or self.hue > 0 or self.grayscale > 0

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"x: expected images (B, C, H, W), got shape {tuple(x.shape)}")
        if self.colour and x.shape[1] != 3:
            raise ValueError(
                f"x: saturation, channel_gain, hue and grayscale need RGB images (B, 3, H, W), "
                f"got {x.shape[1]} channel(s)"
            )
        theta = self.affine(x.shape[0], generator, x.device, x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        view = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        jittered = self.photometric(view, generator)
        if self.jitter < 1:
            u = self._rand((x.shape[0], 1, 1, 1), generator, view)
            jittered = torch.where(u < self.jitter, jittered, view)
        view = self.to_grayscale(jittered, generator)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return view + self.noise * noise

    @staticmethod
    def _rand(shape: tuple[int, ...], generator: torch.Generator | None, like: torch.Tensor):
        return torch.rand(shape, generator=generator, device=like.device, dtype=like.dtype)

    def photometric(
        self, view: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W): contrast, brightness, then the colour jitter (class docstring)."""
        shape = (view.shape[0],) + (1,) * (view.ndim - 1)
        if self.contrast > 0:
            scale = self._rand(shape, generator, view)
            shift = self._rand(shape, generator, view)
            view = view * (1 + self.contrast * (2 * scale - 1)) + self.contrast * (2 * shift - 1)
        if self.brightness > 0:
            view = view + self.brightness * (2 * self._rand(shape, generator, view) - 1)
        return self.colour_jitter(view, generator) if self.colour else view

    def colour_jitter(
        self, view: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 3, H, W): saturation, channel gain, then hue (class docstring)."""
        n = view.shape[0]

        def uniform(shape: tuple[int, ...], spread: float) -> torch.Tensor:
            return 1 + spread * (2 * self._rand(shape, generator, view) - 1)

        if self.saturation > 0:
            gray = luminance(view)
            view = gray + uniform((n, 1, 1, 1), self.saturation) * (view - gray)
        if self.channel_gain > 0:
            view = view * uniform((n, 3, 1, 1), self.channel_gain)
        if self.hue > 0:
            turns = self.hue * (2 * self._rand((n,), generator, view) - 1)
            view = rotate_hue(view, 2 * math.pi * turns)
        return view

    def to_grayscale(
        self, view: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W): each view replaced by its luminance with probability `grayscale`."""
        if self.grayscale <= 0:
            return view
        u = self._rand((view.shape[0], 1, 1, 1), generator, view)
        return torch.where(u < self.grayscale, luminance(view).expand_as(view), view)

    def affine(
        self, n: int, generator: torch.Generator | None, device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        """(n, 2, 3) matrices mapping output to input coordinates in [-1, 1]^2."""

        def uniform(low: float, high: float) -> torch.Tensor:
            u = torch.rand(n, generator=generator, device=device, dtype=dtype)
            return low + (high - low) * u

        area = uniform(self.min_area, 1.0)
        # the aspect ratio is drawn where both sides of the crop stay within the image
        low = area.log().clamp(min=math.log(3 / 4))
        high = (-area.log()).clamp(max=math.log(4 / 3))
        log_ratio = low + (high - low) * uniform(0, 1)
        sx, sy = (area * log_ratio.exp()).sqrt(), (area / log_ratio.exp()).sqrt()
        tx, ty = uniform(-1, 1) * (1 - sx), uniform(-1, 1) * (1 - sy)
        angle = uniform(-1, 1) * math.radians(self.degrees)
        mirror = torch.ones(n, device=device, dtype=dtype)
        if self.flip:
            mirror = torch.where(uniform(0, 1) < 0.5, -mirror, mirror)
        cos, sin = angle.cos(), angle.sin()
        row0 = torch.stack([sx * cos * mirror, -sy * sin, tx], 1)
        row1 = torch.stack([sx * sin * mirror, sy * cos, ty], 1)
        return torch.stack([row0, row1], 1)


def luminance(images: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB -> (B, 1, H, W) luminance, BT.601 weights (LUMA)."""
    weights = torch.tensor(LUMA, device=images.device, dtype=images.dtype)
    return torch.einsum("bchw,c->bhw", images, weights).unsqueeze(1)


def rotate_hue(images: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) RGB, (B,) radians -> (B, 3, H, W): the chroma (I, Q of YIQ) rotated by each angle.

    The luminance Y (BT.601) is unchanged, and so is every gray pixel (R = G = B); angle 0 is the
    identity.
    """
    to_yiq = torch.tensor(YIQ, device=images.device, dtype=images.dtype)
    cos, sin = angles.cos(), angles.sin()
    one, zero = torch.ones_like(angles), torch.zeros_like(angles)
    rotation = torch.stack(
        [torch.stack([one, zero, zero], 1), torch.stack([zero, cos, -sin], 1),
         torch.stack([zero, sin, cos], 1)], 1,
    )  # fmt: skip
    matrices = torch.linalg.inv(to_yiq) @ rotation @ to_yiq  # (B, 3, 3)
    return torch.einsum("bij,bjhw->bihw", matrices, images)
