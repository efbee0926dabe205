"""Random views of images for JEPA training: resized crops, small rotations, flips, contrast, colour and noise.

Every view is drawn with an explicit torch.Generator, so a seed fixes a whole training run. The colour
options (saturation, channel gain, grayscale) are for RGB images and default to off; with them off, a
view draws exactly the random numbers it drew before they existed, so earlier runs replay unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601 weights of R, G, B (torchvision's rgb_to_grayscale)


class ImageViews(nn.Module):
    """(B, C, H, W) -> (B, C, H, W): one random affine view of each image, plus Gaussian noise.

    The view zooms into a random crop covering a fraction in [min_area, 1] of the image (aspect
    ratio in [3/4, 4/3]), rotates it by up to `degrees`, optionally flips it left-right, scales its
    contrast by a factor in [1 - contrast, 1 + contrast] and shifts its brightness by up to
    `contrast` (so that the amount of ink is not a shortcut), and adds noise of standard deviation
    `noise`. All in one batched `grid_sample` (bilinear; the border pixel, background for these
    images, fills what the rotation uncovers).

    Colour (C = 3 only; all off by default): the chroma (each pixel minus its luminance, BT.601
    weights) is scaled by a factor in [1 - saturation, 1 + saturation], each channel by its own
    factor in [1 - channel_gain, 1 + channel_gain] (a colour cast: hue and white balance shift), and
    with probability `grayscale` the view is replaced by its luminance in all three channels. The
    inputs are normalised with one mean and standard deviation for all channels, an affine map that
    commutes with luminance and saturation (the weights sum to 1), so these act as they would on
    pixels; the channel gain scales each channel about the data set's mean colour.

    Args:
        min_area: smallest crop area as a fraction of the image.
        degrees: largest absolute rotation.
        flip: flip left-right with probability 1/2.
        noise: standard deviation of the additive noise (input units).
        contrast: largest relative change of contrast and brightness (0: none).
        saturation: largest relative change of the chroma (0: none; 1 allows full grayscale).
        channel_gain: largest relative change of each channel on its own (0: none).
        grayscale: probability of a grayscale view (0: never).
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
    ):
        super().__init__()
        if not 0 < min_area <= 1:
            raise ValueError(f"min_area: expected a fraction in (0, 1], got {min_area}")
        if degrees < 0 or noise < 0:
            raise ValueError(f"degrees and noise: expected >= 0, got {degrees} and {noise}")
        if not 0 <= contrast < 1:
            raise ValueError(f"contrast: expected a fraction in [0, 1), got {contrast}")
        for name, value in (("saturation", saturation), ("channel_gain", channel_gain)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name}: expected a fraction in [0, 1], got {value}")
        if not 0 <= grayscale <= 1:
            raise ValueError(f"grayscale: expected a probability in [0, 1], got {grayscale}")
        self.min_area, self.degrees, self.flip, self.noise = min_area, degrees, flip, noise
        self.contrast = contrast
        self.saturation, self.channel_gain, self.grayscale = saturation, channel_gain, grayscale

    @property
    def colour(self) -> bool:
        """Whether any colour option is on (those need RGB images)."""
        return self.saturation > 0 or self.channel_gain > 0 or self.grayscale > 0

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"x: expected images (B, C, H, W), got shape {tuple(x.shape)}")
        if self.colour and x.shape[1] != 3:
            raise ValueError(
                f"x: saturation, channel_gain and grayscale need RGB images (B, 3, H, W), got "
                f"{x.shape[1]} channel(s)"
            )
        theta = self.affine(x.shape[0], generator, x.device, x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        view = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if self.contrast > 0:
            shape = (x.shape[0],) + (1,) * (x.ndim - 1)
            scale = torch.rand(shape, generator=generator, device=x.device, dtype=x.dtype)
            shift = torch.rand(shape, generator=generator, device=x.device, dtype=x.dtype)
            view = view * (1 + self.contrast * (2 * scale - 1)) + self.contrast * (2 * shift - 1)
        if self.colour:
            view = self.colour_jitter(view, generator)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return view + self.noise * noise

    def colour_jitter(
        self, view: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """(B, 3, H, W) -> (B, 3, H, W): saturation, channel gain, then grayscale (class docstring)."""
        n, device, dtype = view.shape[0], view.device, view.dtype

        def uniform(shape: tuple[int, ...], spread: float) -> torch.Tensor:
            u = torch.rand(shape, generator=generator, device=device, dtype=dtype)
            return 1 + spread * (2 * u - 1)

        if self.saturation > 0:
            gray = luminance(view)
            view = gray + uniform((n, 1, 1, 1), self.saturation) * (view - gray)
        if self.channel_gain > 0:
            view = view * uniform((n, 3, 1, 1), self.channel_gain)
        if self.grayscale > 0:
            u = torch.rand((n, 1, 1, 1), generator=generator, device=device, dtype=dtype)
            view = torch.where(u < self.grayscale, luminance(view).expand_as(view), view)
        return view

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
