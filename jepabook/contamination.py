"""Plant known problems in a clean image set, to measure what finds them (library).

`inject_problems` adds three kinds of problem images to a clean set, seeded, and records which is
which (`Contaminated`):
- "corrupted": other in-domain images damaged by heavy noise, blur, an occluding block or
  saturation (`corrupt`, cycling through `CORRUPTIONS`);
- "off-domain": images of another data set (e.g. MNIST digits in Fashion-MNIST), given random labels;
- "near-duplicate": copies of set members moved by a quarter pixel, with faint noise
  (`near_duplicates`).
`DIRECTIONS` says where a density score should put each kind: least likely first, or, for a
near-duplicate (as likely as its original), most likely first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from jepabook.datasets import ImageSet, _seed
from jepabook.ranking import as_fraction

CLEAN = "clean"
PROBLEMS = ("corrupted", "off-domain", "near-duplicate")
KINDS = (CLEAN, *PROBLEMS)
CORRUPTIONS = ("noise", "blur", "occlusion", "saturation")
# Where a score should put each problem: least likely ("lowest") or most likely ("highest") first.
DIRECTIONS = {"corrupted": "lowest", "off-domain": "lowest", "near-duplicate": "highest"}


@dataclass
class Contaminated:
    """A clean image set with injected problem images, shuffled together.

    images: the N images (N, 1, H, W) in [0, 1] with labels (injected off-domain images carry random
    labels of the clean set's classes); kind: (N,) one of KINDS; detail: (N,) the corruption of a
    corrupted image, "" otherwise; source: (N,) for a near-duplicate, the index in this set of the
    image it copies, -1 otherwise.
    """

    images: ImageSet
    kind: np.ndarray
    detail: np.ndarray
    source: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    def counts(self) -> pd.Series:
        """Number of images of each kind (clean first)."""
        return pd.Series({k: int((self.kind == k).sum()) for k in KINDS}, name="images")

    def targets(self, problem: str) -> np.ndarray:
        """(N,) bool: the images a detector of `problem` should flag.

        For "near-duplicate", the copies *and* their originals: no score of the set can tell which of
        two near-identical images came first, so each member of a pair counts as found.
        """
        if problem not in PROBLEMS:
            raise ValueError(f"problem: expected one of {PROBLEMS}, got {problem!r}")
        targets = self.kind == problem
        if problem == "near-duplicate":
            targets = targets.copy()
            targets[self.source[self.source >= 0]] = True
        return targets


def _gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """(n, 1, H, W) -> (n, 1, H, W): separable Gaussian blur, borders replicated."""
    radius = max(1, int(round(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=images.dtype)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    padded = F.pad(images, (radius, radius, radius, radius), mode="replicate")
    out = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(out, kernel.view(1, 1, -1, 1))


def corrupt(images: torch.Tensor, kinds: Sequence[str], *, seed: int = 0) -> torch.Tensor:
    """Damaged copies (n, 1, H, W) in [0, 1] of images (n, 1, H, W) in [0, 1], image i by kinds[i]:

    - "noise": + N(0, 0.5^2) per pixel, clipped;
    - "blur": Gaussian blur with a 2-pixel standard deviation;
    - "occlusion": a grey (0.5) square of side H // 2 at a random place;
    - "saturation": 4 x the pixels, clipped (a washed-out silhouette).
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(
            f"images: expected a tensor (n, 1, H, W), got {getattr(images, 'shape', images)!r}"
        )
    kinds = list(kinds)
    if len(kinds) != len(images):
        raise ValueError(f"kinds: expected {len(images)} corruption names, got {len(kinds)}")
    unknown = sorted(set(kinds) - set(CORRUPTIONS))
    if unknown:
        raise ValueError(f"kinds: expected names in {CORRUPTIONS}, got {unknown}")
    generator = torch.Generator().manual_seed(_seed(seed))
    out = images.clone()
    H, W = images.shape[-2:]
    side = H // 2
    for i, kind in enumerate(kinds):
        x = images[i : i + 1]
        if kind == "noise":
            x = x + 0.5 * torch.randn(x.shape, generator=generator)
        elif kind == "blur":
            x = _gaussian_blur(x, 2.0)
        elif kind == "occlusion":
            top = int(torch.randint(0, H - side + 1, (1,), generator=generator))
            left = int(torch.randint(0, W - side + 1, (1,), generator=generator))
            x = x.clone()
            x[..., top : top + side, left : left + side] = 0.5
        else:
            x = 4 * x
        out[i : i + 1] = x.clamp(0, 1)
    return out


def near_duplicates(
    images: torch.Tensor, *, shift: float = 0.25, noise: float = 0.02, seed: int = 0
) -> torch.Tensor:
    """Near-copies (n, 1, H, W) in [0, 1] of images (n, 1, H, W): each moved by `shift` pixels in a
    random one of the 8 directions (linear interpolation with the copy rolled by one pixel:
    (1 - shift) x + shift roll(x)), plus N(0, noise^2) per pixel, clipped.

    The default (a quarter pixel, faint noise) is the kind of difference a re-encoding or a resize
    leaves; a whole-pixel shift of a 28-pixel image already moves it as far from its original, in
    pixels, as other images of the set are.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        raise ValueError(
            f"images: expected a tensor (n, 1, H, W), got {getattr(images, 'shape', images)!r}"
        )
    if isinstance(shift, bool) or not isinstance(shift, int | float) or not 0 <= shift <= 1:
        raise ValueError(f"shift: expected a number of pixels in [0, 1], got {shift!r}")
    if isinstance(noise, bool) or not isinstance(noise, int | float) or noise < 0:
        raise ValueError(f"noise: expected a non-negative standard deviation, got {noise!r}")
    generator = torch.Generator().manual_seed(_seed(seed))
    directions = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]
    picks = torch.randint(0, len(directions), (len(images),), generator=generator).tolist()
    rolled = [torch.roll(x, directions[p], dims=(1, 2)) for x, p in zip(images, picks, strict=True)]
    out = images.clone() if not rolled else (1 - shift) * images + shift * torch.stack(rolled)
    out = out + noise * torch.randn(out.shape, generator=generator)
    return out.clamp(0, 1)


def inject_problems(
    clean: ImageSet,
    *,
    pool: ImageSet,
    off_domain: ImageSet,
    fraction: float = 0.03,
    shift: float = 0.25,
    seed: int = 0,
) -> Contaminated:
    """The clean set plus m = round(fraction * len(clean)) images of each problem kind, shuffled.

    clean: (n, 1, H, W) images; pool: other in-domain images (>= m, none of them in `clean`), the
    sources of the corrupted images (the corruptions cycle through CORRUPTIONS); off_domain: images of
    another domain (>= m, the same H, W); the near-duplicates copy m distinct members of `clean`
    (moved by `shift` pixels, see `near_duplicates`).
    Returns a Contaminated of n + 3m images; the same seed gives the same set.
    """
    for name, value in (("clean", clean), ("pool", pool), ("off_domain", off_domain)):
        if not isinstance(value, ImageSet):
            raise ValueError(f"{name}: expected an ImageSet, got {type(value).__name__}")
    fraction = as_fraction("fraction", fraction)
    seed = _seed(seed)
    n = len(clean)
    m = int(round(fraction * n))
    if m < 1:
        raise ValueError(
            f"fraction: {fraction} of {n} images injects no image of each kind; raise it"
        )
    for name, value in (("pool", pool), ("off_domain", off_domain)):
        if len(value) < m:
            raise ValueError(f"{name}: expected at least {m} images to inject, got {len(value)}")
        if value.images.shape[1:] != clean.images.shape[1:]:
            raise ValueError(
                f"{name}: expected images of shape {tuple(clean.images.shape[1:])} like clean, "
                f"got {tuple(value.images.shape[1:])}"
            )
    rng = np.random.default_rng(seed)
    corrupt_from = pool.subset(np.sort(rng.choice(len(pool), m, replace=False)))
    kinds = [CORRUPTIONS[i % len(CORRUPTIONS)] for i in range(m)]
    corrupted = corrupt(corrupt_from.images, kinds, seed=seed)
    off = off_domain.subset(np.sort(rng.choice(len(off_domain), m, replace=False)))
    originals = np.sort(rng.choice(n, m, replace=False))
    copies = near_duplicates(clean.images[torch.as_tensor(originals)], shift=shift, seed=seed + 1)

    images = torch.cat([clean.images, corrupted, off.images, copies])
    labels = None
    if clean.labels is not None:
        n_classes = len(clean.classes) if clean.classes else int(clean.labels.max()) + 1
        corrupt_labels = (
            corrupt_from.labels
            if corrupt_from.labels is not None and pool.classes == clean.classes
            else torch.as_tensor(rng.integers(0, n_classes, m))
        )
        random_labels = torch.as_tensor(rng.integers(0, n_classes, m))
        labels = torch.cat(
            [clean.labels, corrupt_labels.long(), random_labels.long(), clean.labels[originals]]
        )
    kind = np.array([CLEAN] * n + ["corrupted"] * m + ["off-domain"] * m + ["near-duplicate"] * m)
    detail = np.array([""] * n + kinds + [""] * 2 * m, dtype=object)
    source = np.full(n + 3 * m, -1)
    source[n + 2 * m :] = originals

    order = rng.permutation(n + 3 * m)
    position = np.empty_like(order)
    position[order] = np.arange(len(order))  # new index of each old index
    source = source[order]
    source[source >= 0] = position[source[source >= 0]]
    shuffled = ImageSet(
        f"{clean.name}+injected",
        images[torch.as_tensor(order)].contiguous(),
        None if labels is None else labels[torch.as_tensor(order)],
        clean.classes,
    )
    return Contaminated(shuffled, kind[order], detail[order], source)
