"""Random views of images for JEPA training: resized crops, small rotations, flips, contrast and noise.

Every view is drawn with an explicit torch.Generator, so a seed fixes a whole training run.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class ImageViews(nn.Module):
    """(B, C, H, W) -> (B, C, H, W): one random affine view of each image, plus Gaussian noise.

    The view zooms into a random crop covering a fraction in [min_area, 1] of the image (aspect
    ratio in [3/4, 4/3]), rotates it by up to `degrees`, optionally flips it left-right, scales its
    contrast by a factor in [1 - contrast, 1 + contrast] and shifts its brightness by up to
    `contrast` (so that the amount of ink is not a shortcut), and adds noise of standard deviation
    `noise`. All in one batched `grid_sample` (bilinear; the border pixel, background for these
    images, fills what the rotation uncovers).

    Args:
        min_area: smallest crop area as a fraction of the image.
        degrees: largest absolute rotation.
        flip: flip left-right with probability 1/2.
        noise: standard deviation of the additive noise (input units).
        contrast: largest relative change of contrast and brightness (0: none).
    """

    def __init__(
        self,
        min_area: float = 0.5,
        degrees: float = 10.0,
        flip: bool = True,
        noise: float = 0.05,
        contrast: float = 0.0,
    ):
        super().__init__()
        if not 0 < min_area <= 1:
            raise ValueError(f"min_area: expected a fraction in (0, 1], got {min_area}")
        if degrees < 0 or noise < 0:
            raise ValueError(f"degrees and noise: expected >= 0, got {degrees} and {noise}")
        if not 0 <= contrast < 1:
            raise ValueError(f"contrast: expected a fraction in [0, 1), got {contrast}")
        self.min_area, self.degrees, self.flip, self.noise = min_area, degrees, flip, noise
        self.contrast = contrast

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"x: expected images (B, C, H, W), got shape {tuple(x.shape)}")
        theta = self.affine(x.shape[0], generator, x.device, x.dtype)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        view = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        if self.contrast > 0:
            shape = (x.shape[0],) + (1,) * (x.ndim - 1)
            scale = torch.rand(shape, generator=generator, device=x.device, dtype=x.dtype)
            shift = torch.rand(shape, generator=generator, device=x.device, dtype=x.dtype)
            view = view * (1 + self.contrast * (2 * scale - 1)) + self.contrast * (2 * shift - 1)
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return view + self.noise * noise

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
