"""Data curation with density scores: plant problems in a training set and measure who finds them,
then prune the least likely images and measure what it does downstream.

Injection (`inject_problems`) adds three kinds of problem images to a clean image set, seeded:
- "corrupted": other in-domain images, damaged by heavy noise, blur, an occluding block or saturation
  (a mix, `CORRUPTIONS`);
- "off-domain": images of another data set (e.g. MNIST digits in Fashion-MNIST), given random labels;
- "near-duplicate": copies of set members moved by a quarter pixel, with faint noise.

Finding them is measured by precision at k: of the k images a score ranks most suspicious, the share
that are of the problem kind (k = how many there are: the R-precision). Corrupted and off-domain
images are looked for among the *lowest* scores (least likely). A density estimate sees a duplicate
as at least as likely as its original, so near-duplicates are looked for among the *highest* scores,
and the dedicated tool is the distance from each image to the nearest *other* member of the set
(`nearest_other_distance`). A random ranking's precision is the problem's share of the set
(`random_precision`, a hypergeometric interval).

Pruning (`prune`, `random_keep`, `pruning_probe_table`) removes a fraction of the lowest-scored images
of a set, beside removing the same fraction at random.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from jepabook.chapters.images import score_sets
from jepabook.datasets import ImageSet, _seed
from jepabook.detectors import (
    KNN,
    Detector,
    JepaScore,
    MultiView,
    Sample,
    cross_fit_scores,
    embed_sample,
)
from jepabook.devices import resolve_device
from jepabook.image_jepa import train_on_images
from jepabook.metrics import (
    Interval,
    auroc_rows,
    bootstrap_auroc,
    format_interval,
    interval_strings,
)
from jepabook.plots import figure, image_strip, label_panels
from jepabook.probe import probe_correct
from jepabook.verdicts import Verdict, decide

CLEAN = "clean"
PROBLEMS = ("corrupted", "off-domain", "near-duplicate")
KINDS = (CLEAN, *PROBLEMS)
CORRUPTIONS = ("noise", "blur", "occlusion", "saturation")
# Where a score should put each problem: least likely ("lowest") or most likely ("highest") first.
DIRECTIONS = {"corrupted": "lowest", "off-domain": "lowest", "near-duplicate": "highest"}
PROBLEM_COLOURS = {
    CLEAN: "#bbbbbb",
    "corrupted": "#d55e00",
    "off-domain": "#0072b2",
    "near-duplicate": "#009e73",
}  # figure frames, colour-blind safe


# ---------------------------------------------------------------- argument checks


def _fraction(name: str, value: object, *, closed: bool = False) -> float:
    ok = isinstance(value, int | float | np.floating) and not isinstance(value, bool)
    if not ok or not (0 < value < 1 or (closed and value == 0)):
        expected = "[0, 1)" if closed else "(0, 1)"
        raise ValueError(f"{name}: expected a number in {expected}, got {value!r}")
    return float(value)


def _scores(name: str, values) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"{name}: expected a non-empty 1-D array, got shape {values.shape}")
    if not np.isfinite(values).all():
        raise ValueError(
            f"{name}: expected finite values, sample {np.flatnonzero(~np.isfinite(values))[0]} is not"
        )
    return values


def _mask(name: str, values, n: int) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype != bool or values.shape != (n,):
        raise ValueError(
            f"{name}: expected a boolean array of shape ({n},), got {values.dtype} {values.shape}"
        )
    return values


def _direction(value: str) -> bool:
    """True for "lowest" (least likely first), False for "highest"."""
    if value not in ("lowest", "highest"):
        raise ValueError(f"direction: expected 'lowest' or 'highest', got {value!r}")
    return value == "lowest"


# ---------------------------------------------------------------- injected problems


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
    fraction = _fraction("fraction", fraction)
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


# ---------------------------------------------------------------- scoring a set by itself


def self_scores(
    detectors: Sequence[Detector], sample: Sample, *, folds: int = 5, seed: int = 0
) -> dict[str, np.ndarray]:
    """{detector name: (n,) scores} of a set ranked by itself, higher = more in-distribution.

    JEPA-SCORE (and its multi-view form) needs no fit and scores each image alone; every other
    detector is cross-fitted (jepabook.detectors.cross_fit_scores): each image is scored by the
    detector fitted on the other folds, so that no image is its own neighbour.
    """
    result = {}
    for detector in detectors:
        if type(detector) in (JepaScore, MultiView):
            result[detector.name] = np.asarray(detector.score(sample), dtype=np.float64)
        else:
            result[detector.name] = cross_fit_scores(detector, sample, folds, seed)
    return result


def nearest_other_distance(features, *, normalise: bool = True) -> np.ndarray:
    """(n,) distance from each row of features (n, d) to the nearest *other* row (n >= 2).

    normalise: L2-normalise the rows first (as k-NN detectors do). Small = likely a duplicate; the
    leave-one-out 1-nearest-neighbour distance, so large = isolated.
    """
    from sklearn.neighbors import NearestNeighbors

    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    x = np.asarray(features, dtype=np.float64)
    x = x.reshape(len(x), -1) if x.ndim > 2 else x
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"features: expected an (n, d) array with n >= 2, got shape {x.shape}")
    if normalise:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    distances, _ = NearestNeighbors(n_neighbors=1).fit(x).kneighbors()  # excludes each row itself
    return distances[:, 0]


def neighbour_share(features, members, k: int = 10, *, normalise: bool = True) -> np.ndarray:
    """For each member row: the share of its k nearest *other* rows that are members too.

    features: (n, d); members: (n,) bool. Returns (members.sum(),). A high share means the members
    form a cluster of their own, which hides them from any score that looks at k <= cluster size
    neighbours (a k-NN distance, a density estimate): they support each other.
    """
    from sklearn.neighbors import NearestNeighbors

    x = np.asarray(features, dtype=np.float64)
    x = x.reshape(len(x), -1) if x.ndim > 2 else x
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"features: expected an (n, d) array with n >= 2, got shape {x.shape}")
    members = _mask("members", members, len(x))
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k < len(x):
        raise ValueError(f"k: expected an integer in 1..{len(x) - 1}, got {k!r}")
    if normalise:
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    _, index = NearestNeighbors(n_neighbors=k).fit(x).kneighbors()
    return members[index[members]].mean(1)


def kind_shift(scores: dict[str, np.ndarray], kind: np.ndarray) -> pd.DataFrame:
    """Where each problem kind sits under each score: (mean of the kind - mean of the clean images)
    / standard deviation of the clean images. Negative: the kind scores as less likely.

    scores: name -> (n,); kind: (n,) labels from KINDS. One row per score, one column per problem.
    """
    kind = np.asarray(kind)
    clean = kind == CLEAN
    if clean.sum() < 2:
        raise ValueError("kind: expected at least 2 clean images")
    rows = {}
    for name, values in scores.items():
        values = _scores(f"scores[{name!r}]", values)
        if len(values) != len(kind):
            raise ValueError(f"scores[{name!r}]: expected {len(kind)} scores, got {len(values)}")
        centre, spread = values[clean].mean(), values[clean].std(ddof=1)
        rows[name] = {
            problem: (values[kind == problem].mean() - centre) / max(spread, 1e-12)
            for problem in PROBLEMS
            if (kind == problem).any()
        }
    return pd.DataFrame(rows).T


# ---------------------------------------------------------------- precision at k


def _flagged(scores: np.ndarray, k: int, lowest: bool) -> np.ndarray:
    order = np.argsort(scores if lowest else -scores, kind="stable")
    return order[:k]


def precision_at_k(scores, targets, k: int | None = None, *, direction: str = "lowest") -> float:
    """Share of targets among the k images a score ranks first.

    scores: (n,) higher = more in-distribution; targets: (n,) bool; k: default the number of targets
    (precision = recall then); direction: "lowest" (least likely first) or "highest".
    """
    scores = _scores("scores", scores)
    targets = _mask("targets", targets, len(scores))
    lowest = _direction(direction)
    k = int(targets.sum()) if k is None else k
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= len(scores):
        raise ValueError(f"k: expected an integer in 1..{len(scores)}, got {k!r}")
    return float(targets[_flagged(scores, int(k), lowest)].mean())


def bootstrap_precision(
    scores,
    targets,
    *,
    direction: str = "lowest",
    share_of_k: float = 1.0,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> Interval:
    """Precision at k = round(share_of_k * number of targets), with a percentile bootstrap interval.

    Each bootstrap draw resamples the n images with replacement and recounts its targets, so the
    interval covers both which images happen to be in the set and how many problems it holds.
    """
    scores = _scores("scores", scores)
    targets = _mask("targets", targets, len(scores))
    lowest = _direction(direction)
    if not isinstance(share_of_k, int | float) or not 0 < share_of_k <= 1:
        raise ValueError(f"share_of_k: expected a number in (0, 1], got {share_of_k!r}")
    if not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot: expected a positive integer, got {n_boot!r}")
    if not 0 < level < 1:
        raise ValueError(f"level: expected a number in (0, 1), got {level!r}")
    if not targets.any():
        raise ValueError("targets: expected at least one target")

    def one(s: np.ndarray, t: np.ndarray) -> float:
        k = max(1, int(round(share_of_k * t.sum())))
        return float(t[_flagged(s, k, lowest)].mean())

    rng = np.random.default_rng(_seed(seed))
    draws = []
    for _ in range(n_boot):
        index = rng.integers(0, len(scores), len(scores))
        if targets[index].any():
            draws.append(one(scores[index], targets[index]))
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return Interval(one(scores, targets), float(low), float(high))


def random_precision(n: int, n_targets: int, k: int, level: float = 0.95) -> Interval:
    """Precision at k of a random ranking of n images holding n_targets targets: its expectation
    n_targets / n and the central `level` range of hits / k (hits ~ hypergeometric)."""
    from scipy import stats

    for name, value, low in (("n", n, 1), ("n_targets", n_targets, 0), ("k", k, 1)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
            raise ValueError(f"{name}: expected an integer >= {low}, got {value!r}")
    for name, value in (("n_targets", n_targets), ("k", k)):
        if value > n:
            raise ValueError(f"{name}: expected at most n={n}, got {value}")
    hits = stats.hypergeom(n, n_targets, k)
    low, high = hits.ppf([(1 - level) / 2, (1 + level) / 2])
    return Interval(n_targets / n, float(low) / k, float(high) / k)


def precision_table(
    scores: dict[str, np.ndarray],
    data: Contaminated,
    *,
    directions: dict[str, str] | None = None,
    shares_of_k: Sequence[float] = (1.0, 0.5),
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Precision at k of every score (name -> (N,), higher = more in-distribution) for every problem.

    directions: problem -> "lowest" or "highest" (default DIRECTIONS). One row per (detector,
    problem, share of k): k, precision with its bootstrap interval (low, high), and the random
    ranking's expectation (random) and 95% range (random_low, random_high).
    """
    directions = DIRECTIONS if directions is None else directions
    unknown = sorted(set(directions) - set(PROBLEMS))
    if unknown:
        raise ValueError(f"directions: expected problems from {PROBLEMS}, got {unknown}")
    rows = []
    for name, values in scores.items():
        values = _scores(f"scores[{name!r}]", values)
        if len(values) != len(data):
            raise ValueError(f"scores[{name!r}]: expected {len(data)} scores, got {len(values)}")
        for problem, direction in directions.items():
            targets = data.targets(problem)
            for share in shares_of_k:
                k = max(1, int(round(share * targets.sum())))
                interval = bootstrap_precision(
                    values, targets, direction=direction, share_of_k=share, n_boot=n_boot, seed=seed
                )
                chance = random_precision(len(values), int(targets.sum()), k)
                rows.append(
                    {"detector": name, "problem": problem, "direction": direction,
                     "share_of_k": share, "k": k, "precision": interval.estimate,
                     "low": interval.low, "high": interval.high, "random": chance.estimate,
                     "random_low": chance.low, "random_high": chance.high}
                )  # fmt: skip
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- pruning


def prune(scores, fraction: float) -> np.ndarray:
    """(n,) bool keep-mask that removes the round(fraction * n) lowest-scored (least likely) images."""
    scores = _scores("scores", scores)
    fraction = _fraction("fraction", fraction, closed=True)
    keep = np.ones(len(scores), dtype=bool)
    keep[np.argsort(scores, kind="stable")[: int(round(fraction * len(scores)))]] = False
    return keep


def random_keep(n: int, fraction: float, seed: int = 0) -> np.ndarray:
    """(n,) bool keep-mask that removes round(fraction * n) images chosen at random (seeded)."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"n: expected a positive integer, got {n!r}")
    fraction = _fraction("fraction", fraction, closed=True)
    keep = np.ones(n, dtype=bool)
    keep[np.random.default_rng(_seed(seed)).permutation(n)[: int(round(fraction * n))]] = False
    return keep


def pruning_probe_table(
    features,
    labels,
    test_features,
    test_labels,
    rankings: dict[str, np.ndarray],
    fractions: Sequence[float],
    *,
    random_seeds: Sequence[int] = (0, 1, 2),
) -> pd.DataFrame:
    """Linear-probe test accuracy after removing each fraction of the training images.

    features (n, K), labels (n,): the frozen encoder's training embeddings; test_features (m, K),
    test_labels (m,); rankings: name -> (n,) scores (the lowest are removed). "random" rows remove
    the same number of images at random, once per seed. Fraction 0 is the unpruned probe. Columns:
    ranking, fraction, seed (-1 for a ranking), kept, accuracy, correct ((m,) bool per test image).
    """
    features, labels = np.asarray(features), np.asarray(labels)
    if len(features) != len(labels):
        raise ValueError(
            f"labels: expected {len(features)} labels like features, got {len(labels)}"
        )
    if not random_seeds:
        raise ValueError("random_seeds: expected at least one seed")

    def row(ranking: str, fraction: float, seed: int, keep: np.ndarray) -> dict:
        correct = probe_correct(features[keep], labels[keep], test_features, test_labels)
        return {"ranking": ranking, "fraction": float(fraction), "seed": seed,
                "kept": int(keep.sum()), "accuracy": float(correct.mean()), "correct": correct}  # fmt: skip

    rows = [row("none", 0.0, -1, np.ones(len(features), dtype=bool))]
    for fraction in fractions:
        rows += [
            row(name, fraction, -1, prune(values, fraction)) for name, values in rankings.items()
        ]
        rows += [
            row("random", fraction, seed, random_keep(len(features), fraction, seed))
            for seed in random_seeds
        ]
    return pd.DataFrame(rows)


def compare_to_random(correct, random_correct) -> dict:
    """Whether a probe's test accuracy differs from random removal's, beyond the noise.

    correct: (m,) bool outcomes of the probe on the m test samples; random_correct: (r, m) bool
    outcomes of the r random removals on the same test samples. The difference is accuracy minus the
    mean accuracy of the random removals; its yardstick is 2 x sqrt(the variance of the random
    accuracies over seeds (0 with one seed) + the paired test-set variance, var_i(correct_i - mean_r
    random_correct_ri) / m). Returns difference, half_width and verdict: "helps", "hurts" or
    "no measurable effect".
    """
    correct = np.asarray(correct)
    random_correct = np.atleast_2d(np.asarray(random_correct))
    if correct.ndim != 1 or correct.size == 0:
        raise ValueError(f"correct: expected a non-empty (m,) array, got shape {correct.shape}")
    if random_correct.shape[1:] != correct.shape or random_correct.size == 0:
        raise ValueError(
            f"random_correct: expected an (r, {correct.size}) array, got shape {random_correct.shape}"
        )
    correct, random_correct = correct.astype(np.float64), random_correct.astype(np.float64)
    accuracies = random_correct.mean(1)
    seeds = float(accuracies.var(ddof=1)) if len(accuracies) > 1 else 0.0
    paired = float((correct - random_correct.mean(0)).var(ddof=1)) / correct.size
    half_width = 2 * np.sqrt(seeds + paired)
    difference = float(correct.mean() - accuracies.mean())
    verdict = "no measurable effect"
    if difference > half_width:
        verdict = "helps"
    elif difference < -half_width:
        verdict = "hurts"
    return {"difference": difference, "half_width": float(half_width), "verdict": verdict}


def removed_by_class(labels, keep, classes: Sequence[str] | None = None) -> pd.Series:
    """Share of each class among the removed images (labels (n,), keep (n,) bool)."""
    labels = np.asarray(labels)
    keep = _mask("keep", keep, len(labels))
    removed = labels[~keep]
    n_classes = len(classes) if classes else int(labels.max()) + 1
    counts = np.bincount(removed, minlength=n_classes) / max(1, len(removed))
    return pd.Series(counts, index=list(classes) if classes else range(n_classes), name="removed")


def pruning_rankings(
    jepa_scores, sample: Sample, *, k: int = 10, folds: int = 5, seed: int = 0
) -> dict[str, np.ndarray]:
    """The pruning rankings of a set: {"JEPA-SCORE": jepa_scores (n,), "k-NN": (n,)}.

    jepa_scores (n,): JEPA-SCORE of the set's n images; sample: their embeddings (n, K), from which
    the k-NN score is cross-fitted (`self_scores`, `folds` folds). Lowest = least likely.
    """

    rankings = {"JEPA-SCORE": np.asarray(jepa_scores)}
    rankings["k-NN"] = self_scores([KNN(k)], sample, folds=folds, seed=seed)[f"k-NN (k={k})"]
    return rankings


def pruning_summary(
    probe: pd.DataFrame, rankings: Sequence[str]
) -> tuple[pd.DataFrame, dict[str, pd.Series]]:
    """Probe accuracy per pruned fraction, each ranking against random removal.

    probe: a `pruning_probe_table`; rankings: the ranking names to summarise. Returns the summary
    (index: fraction; columns: each ranking's accuracy, "random (mean)", "random (sd)" and per
    ranking "<name> − random", "<name> ± (2 s.e.)" and "<name>: verdict", from `compare_to_random`)
    and the yardstick {name: the "± (2 s.e.)" column}.
    """
    names = list(rankings)
    random_rows = probe[probe.ranking == "random"].groupby("fraction").accuracy
    summary = probe[probe.ranking.isin(names)].pivot(
        index="fraction", columns="ranking", values="accuracy"
    )
    summary["random (mean)"] = random_rows.mean()
    summary["random (sd)"] = random_rows.std()
    yardstick = {}
    for name in names:
        verdicts = []
        for fraction in summary.index:
            at_x = probe[probe.fraction == fraction]
            ranked = at_x[at_x.ranking == name].correct.item()
            random_correct = np.stack(at_x[at_x.ranking == "random"].correct)
            verdicts.append(compare_to_random(ranked, random_correct))
        summary[f"{name} − random"] = [v["difference"] for v in verdicts]
        summary[f"{name} ± (2 s.e.)"] = [v["half_width"] for v in verdicts]
        summary[f"{name}: verdict"] = [v["verdict"] for v in verdicts]
        yardstick[name] = summary[f"{name} ± (2 s.e.)"]
    return summary, yardstick


def unpruned_accuracy(probe: pd.DataFrame) -> float:
    """The probe accuracy with no image removed (the "none" row of a `pruning_probe_table`)."""
    return probe.accuracy[probe.ranking == "none"].item()


def retrain_keeps(
    rankings: dict[str, np.ndarray], names: Sequence[str], fraction: float, seeds: Sequence[int]
) -> dict[str, np.ndarray]:
    """The kept-image masks (n,) bool to retrain on: the whole set, `fraction` pruned by each of
    the named rankings ("<name> pruned") and at random once per seed ("random pruned (seed s)")."""
    n = len(next(iter(rankings.values())))
    keeps = {"none (whole clean set)": np.ones(n, dtype=bool)}
    keeps |= {f"{name} pruned": prune(rankings[name], fraction) for name in names}
    keeps |= {f"random pruned (seed {s})": random_keep(n, fraction, s) for s in seeds}
    return keeps


@dataclass
class Retrained:
    """Encoders retrained on kept images, and what they measure (see `retrain_and_measure`).

    keeps: {name: (n,) bool}; encoders: {name: trained encoder}; probe_correct: {name: (m,) bool per
    test image}; probe_accuracy: {name: accuracy}; aurocs: one row per encoder and score x
    out-of-domain set (encoder, column, auroc, low, high); table: encoder x (images, probe accuracy,
    "AUROC [interval]" per column).
    """

    keeps: dict[str, np.ndarray]
    encoders: dict
    probe_correct: dict[str, np.ndarray]
    probe_accuracy: dict[str, float]
    aurocs: pd.DataFrame
    table: pd.DataFrame

    @property
    def random_names(self) -> list[str]:
        """The encoders retrained after a random removal."""
        return [name for name in self.encoders if name.startswith("random")]


def retrain_encoders(
    images: ImageSet, keeps: dict[str, np.ndarray], recipe: str, scale: str, **train_kwargs
) -> dict:
    """{name: encoder trained from scratch on images[keep]} (`train_on_images`, same recipe)."""

    return {
        name: train_on_images(images.subset(torch.as_tensor(keep)), recipe, scale, **train_kwargs)
        for name, keep in keeps.items()
    }


def _auroc_rows(name: str, by_score: dict, ood_names: Sequence[str], n_boot: int, seed: int):
    """AUROC rows of one encoder: by_score {score: {set: (n_set,)}}, "in-domain" against each."""
    rows = []
    for score_name, values in by_score.items():
        sets = {f"{score_name} AUROC · {s}": values[s] for s in ood_names}
        for row in auroc_rows(values["in-domain"], sets, n_boot=n_boot, seed=seed, encoder=name):
            rows.append({"column": row.pop("set"), **row})
    return rows


def _retrained_table(aurocs: pd.DataFrame, keeps: dict, accuracy: dict) -> pd.DataFrame:
    """Encoder x (images, probe accuracy, "AUROC [low, high]" per column)."""
    cells = interval_strings(aurocs, "auroc")
    table = (
        aurocs.assign(cell=cells)
        .pivot(index="encoder", columns="column", values="cell")
        .loc[list(keeps)]
    )
    table.insert(0, "probe accuracy", pd.Series(accuracy).round(3))
    table.insert(0, "images", pd.Series({name: int(keep.sum()) for name, keep in keeps.items()}))
    return table


def retrain_and_measure(
    images: ImageSet,
    keeps: dict[str, np.ndarray],
    test: ImageSet,
    ood_sets: dict[str, ImageSet],
    ood_names: Sequence[str],
    *,
    recipe: str,
    scale: str,
    train_options: dict | None = None,
    device="auto",
    k: int = 10,
    n_boot: int = 1000,
    seed: int = 0,
) -> Retrained:
    """Retrain an encoder on each kept subset of images (n images) and measure it.

    keeps: {name: (n,) bool}; test: m held-out labelled images; ood_sets: {"in-domain": ..., each
    of ood_names: ...}. Per encoder: a linear probe fitted on the embeddings of all n images, its
    (m,) correct outcomes on test; and the bootstrap AUROC of JEPA-SCORE and of k-NN (fitted on the
    kept images' embeddings) separating "in-domain" from each out-of-domain set. Trains and embeds
    on `device` ("auto": CUDA when present).
    """

    encoders = retrain_encoders(
        images, keeps, recipe, scale, device=device, **(train_options or {})
    )
    labels, test_labels = images.labels.numpy(), test.labels.numpy()
    correct, accuracy, auroc_rows = {}, {}, []
    for name, enc in encoders.items():
        enc.encoder.to(resolve_device(device))
        fit = embed_sample(enc.encoder, enc.inputs(images)).embeddings
        held = embed_sample(enc.encoder, enc.inputs(test)).embeddings
        correct[name] = probe_correct(fit, labels, held, test_labels)
        accuracy[name] = correct[name].mean()
        knn = KNN(k).fit(Sample(fit[keeps[name]]))
        by_score = {
            "JEPA-SCORE": score_sets(enc, ood_sets, progress=False),
            "k-NN": {
                s: knn.score(embed_sample(enc.encoder, enc.inputs(x))) for s, x in ood_sets.items()
            },
        }
        auroc_rows += _auroc_rows(name, by_score, ood_names, n_boot, seed)
    aurocs = pd.DataFrame(auroc_rows)
    table = _retrained_table(aurocs, keeps, accuracy)
    return Retrained(keeps, encoders, correct, accuracy, aurocs, table)


# ---------------------------------------------------------------- verdicts


def precision_cells(at_k: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """Detector x problem table of 'precision [interval]' (rows of `precision_table` at one k), with
    the random ranking's expected precision as the last row."""
    cells = at_k.assign(cell=interval_strings(at_k, "precision", "low", "high"))
    out = cells.pivot(index="detector", columns="problem", values="cell")
    out = out.loc[list(names), list(PROBLEMS)]
    chance = at_k.drop_duplicates("problem").set_index("problem")
    out.loc["random ranking (expected)"] = interval_strings(chance, "random")
    out.columns = [f"{p} (k={chance.k[p]}, {chance.direction[p]} first)" for p in out.columns]
    return out


def problem_verdicts(at_k: pd.DataFrame) -> dict[str, tuple[str, str]]:
    """What JEPA-SCORE finds of each problem, against a random ranking and the other scores.

    at_k: a `precision_table` at one share of k (one row per detector x problem, with a
    "JEPA-SCORE" detector; the "random score (control)" detector is left out). Returns
    {problem: (line, short)}: a full sentence, and a short verdict ("not distinguishable from a
    random ranking", "above random ... but behind n scores" or "above random and not clearly behind
    any score"); "clearly better" means the two intervals do not overlap.
    """
    out = {}
    for problem in PROBLEMS:
        rows = at_k[(at_k.problem == problem) & (at_k.detector != "random score (control)")]
        rows = rows.set_index("detector")
        best, jepa = rows.precision.idxmax(), rows.loc["JEPA-SCORE"]
        clearly_better = rows.index[rows.low > jepa.high].tolist()
        above_random = jepa.low > jepa.random_high
        against_random = "better than" if above_random else "not distinguishable from"
        best_p = f"{best} {rows.precision[best]:.2f}"
        line = (
            f"  {problem} ({jepa.k} to find among the {jepa.direction} scores): JEPA-SCORE finds "
            f"{round(jepa.precision * jepa.k)} (precision {format_interval(*jepa[['precision', 'low', 'high']], 2)}),"
            f" {against_random} a random ranking ({jepa.random:.2f}); best: {best_p}"
            f" [{rows.low[best]:.2f}, {rows.high[best]:.2f}];"
            f" {len(clearly_better)} of {len(rows) - 1} other scores clearly better"
            + (f" ({', '.join(clearly_better)})" if clearly_better else "")
        )  # fmt: skip
        if not above_random:
            short = (
                "not distinguishable from a random ranking"
                f" ({jepa.precision:.2f} vs {jepa.random:.2f}; best {best_p})"
            )
        elif clearly_better:
            short = f"above random ({jepa.precision:.2f}) but behind {len(clearly_better)} scores (best {best_p})"
        else:
            short = f"above random and not clearly behind any score ({jepa.precision:.2f}; best {best_p})"
        out[problem] = (line, short)
    return out


def pruning_verdicts(summary: pd.DataFrame, yardstick: dict[str, pd.Series]) -> list[str]:
    """One line per ranking of a `pruning_summary`: its verdict against random removal per fraction."""
    return [
        f"Pruning by {name}, re-probe (vs random removal): "
        + "; ".join(
            f"{100 * x:.0f}% removed: {summary.loc[x, f'{name}: verdict']}"
            f" ({summary.loc[x, f'{name} − random']:+.3f} ± {half_width[x]:.3f})"
            for x in summary.index
        )
        for name, half_width in yardstick.items()
    ]


def _random_probe(retrained: Retrained) -> list[float]:
    return [retrained.probe_accuracy[name] for name in retrained.random_names]


def retraining_verdicts(
    retrained: Retrained, rankings: Sequence[str], fraction: float
) -> list[str]:
    """One line per ranking: probe accuracy and AUROCs after retraining on the images it keeps,
    against the random removals' range and no removal."""
    aurocs, accuracy = retrained.aurocs, retrained.probe_accuracy
    random_probe = _random_probe(retrained)
    rand = aurocs[aurocs.encoder.isin(retrained.random_names)].groupby("column").auroc
    lines = []
    for name in rankings:
        row = aurocs[aurocs.encoder == f"{name} pruned"].set_index("column")
        shifts = ", ".join(
            f"{c}: {row.auroc[c]:.2f} (random {rand.min()[c]:.2f}..{rand.max()[c]:.2f})"
            for c in row.index
        )
        lines.append(
            f"Retrained after removing {100 * fraction:.0f}% by {name}: probe {accuracy[f'{name} pruned']:.3f}"
            f" (random removal {min(random_probe):.3f}..{max(random_probe):.3f},"
            f" no removal {accuracy['none (whole clean set)']:.3f}); {shifts}"
        )  # fmt: skip
    return lines


def jepa_verdicts(
    found_by: dict[str, dict[str, str]],
    summary: pd.DataFrame,
    retrained: Retrained,
    fraction: float,
) -> list[str]:
    """The chapter's verdicts on JEPA-SCORE in a few lines.

    found_by: {encoder name: {problem: short verdict}} (`problem_verdicts`); summary: a
    `pruning_summary` with a "JEPA-SCORE" ranking; retrained: with a "JEPA-SCORE pruned" encoder,
    compared with the random removals by `compare_to_random` on the probe's test outcomes.
    """
    lines = [
        f"Finding {problem} images with JEPA-SCORE ({encoder_name}): {verdict}."
        for encoder_name, short in found_by.items()
        for problem, verdict in short.items()
    ]
    lines.append(
        "Removing JEPA-SCORE's least likely images, frozen encoder, against random removal: "
        + "; ".join(f"{100 * x:.0f}%: {v}" for x, v in summary["JEPA-SCORE: verdict"].items())
        + f" (largest difference {summary['JEPA-SCORE − random'].abs().max():.3f} in accuracy)."
    )
    correct = retrained.probe_correct
    verdict = compare_to_random(
        correct["JEPA-SCORE pruned"], np.stack([correct[name] for name in retrained.random_names])
    )
    random_probe = _random_probe(retrained)
    lines.append(
        f"Retrained after removing {100 * fraction:.0f}% by JEPA-SCORE:"
        f" probe {retrained.probe_accuracy['JEPA-SCORE pruned']:.3f}"
        f" against {min(random_probe):.3f}..{max(random_probe):.3f} after random removals:"
        f" {verdict['verdict']} ({verdict['difference']:+.3f} ± {verdict['half_width']:.3f};"
        f" with {len(random_probe)} random retraining(s), the spread over retrainings is poorly known)."
    )  # fmt: skip
    return lines


# ---------------------------------------------------------------- figure


def problem_strip(ax, images, kinds, *, title: str = "") -> None:
    """Images (n, H, W) side by side, each framed in the colour of its kind (PROBLEM_COLOURS)."""
    from matplotlib.patches import Rectangle

    images = np.asarray(images)
    kinds = list(kinds)
    if len(kinds) != len(images):
        raise ValueError(f"kinds: expected {len(images)} kinds like images, got {len(kinds)}")
    image_strip(ax, images, title=title)
    H, W = images.shape[1:3]
    for i, kind in enumerate(kinds):
        ax.add_patch(
            Rectangle((i * (W + 2) - 0.5, -0.5), W, H, fill=False, lw=2,
                      edgecolor=PROBLEM_COLOURS.get(kind, "black"))
        )  # fmt: skip


def _probe_panel(ax, summary: pd.DataFrame, rankings: Sequence[str], unpruned: float) -> None:
    percent = 100 * summary.index.to_numpy()
    for name in rankings:
        ax.plot(percent, summary[name], "o-", label=f"{name}: least likely removed")
    mean = summary["random (mean)"]
    spread = 2 * summary["random (sd)"].fillna(0)
    ax.plot(percent, mean, "s--", color="grey", label="random removal (mean ± 2 sd over seeds)")
    ax.fill_between(percent, mean - spread, mean + spread, color="grey", alpha=0.2)
    ax.axhline(unpruned, color="black", lw=0.8, label="no removal")
    ax.set(
        xlabel="training images removed (%)",
        ylabel="linear-probe test accuracy",
        title="re-probe, frozen encoder",
    )
    ax.legend(fontsize=7)


def _auroc_panel(
    ax, aurocs: pd.DataFrame, names: Sequence[str], rankings: Sequence[str], fraction: float
) -> None:
    columns = list(dict.fromkeys(aurocs.column))
    colours = {f"{name} pruned": f"C{i}" for i, name in enumerate(rankings)}
    colours["none (whole clean set)"] = "black"
    for j, name in enumerate(names):
        rows = aurocs[aurocs.encoder == name].set_index("column").loc[columns]
        y = np.arange(len(columns)) + 0.12 * (j - (len(names) - 1) / 2)
        ax.errorbar(rows.auroc, y, xerr=[rows.auroc - rows.auroc_low, rows.auroc_high - rows.auroc],
                    fmt="o", ms=4, capsize=2, color=colours.get(name, "grey"), label=name)  # fmt: skip
    ax.axvline(0.5, color="black", lw=0.8, ls=":")
    ax.set_yticks(range(len(columns)), [c.replace(" AUROC · ", "\n") for c in columns])
    ax.invert_yaxis()
    ax.set(
        xlabel="out-of-domain AUROC (0.5 = chance)",
        title=f"retrained after removing {100 * fraction:.0f}%",
    )
    ax.legend(fontsize=7)


def pruning_figure(
    summary: pd.DataFrame,
    retrained: Retrained,
    *,
    rankings: Sequence[str],
    unpruned: float,
    fraction: float,
):
    """Two panels: (a) probe accuracy per removed fraction (`pruning_summary`), each ranking
    against random removal (mean ± 2 sd) and no removal; (b) each retrained encoder's
    out-of-domain AUROCs with intervals. Returns (fig, axes)."""

    fig, axes = figure(2, 1, width=4.6, height=3.3)
    _probe_panel(axes[0], summary, rankings, unpruned)
    _auroc_panel(axes[1], retrained.aurocs, list(retrained.encoders), rankings, fraction)
    label_panels(axes)
    return fig, axes


PROBLEM_IMAGES = ("corrupted", "off-domain")  # the kinds a density should put low


def check(scores: np.ndarray, kind: np.ndarray, *, n_boot: int = 200) -> Interval:
    """The chapter's headline, asserted at every scale: under the fully trained JEPA, corrupted and
    off-domain images get a lower JEPA-SCORE than the clean ones, AUROC interval above 0.6. A
    sign-flipped, shuffled or constant score fails it (tests/test_verdicts_sabotage.py)."""
    scores, kind = np.asarray(scores, dtype=np.float64), np.asarray(kind)
    auroc = bootstrap_auroc(
        scores[kind == CLEAN], scores[np.isin(kind, PROBLEM_IMAGES)], n_boot=n_boot, seed=0
    )
    assert auroc.low > 0.6, f"problem vs clean images AUROC {auroc}: interval not above 0.6"
    return auroc


def curation_verdicts(
    scores: dict[str, np.ndarray],
    kind: np.ndarray,
    at_k: pd.DataFrame,
    *,
    setting: str,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[Verdict]:
    """The chapter's claims as verdict records, for one encoder's scores {detector: (n,)} of the
    contaminated set (labels `kind`) and its precision table at k (`precision_table` rows).

    - the least likely images are the problem images: AUROC of clean vs corrupted and off-domain
      images under JEPA-SCORE (reproduced when its interval lies above 0.55), k-NN beside it;
    - per problem kind, JEPA-SCORE's precision at k against the random ranking's (reproduced when its
      interval lies above the random ranking's 95% upper bound).
    """
    kind = np.asarray(kind)
    clean, problems = kind == CLEAN, np.isin(kind, PROBLEM_IMAGES)

    def auroc(name: str) -> Interval:
        values = np.asarray(scores[name], dtype=np.float64)
        return bootstrap_auroc(values[clean], values[problems], n_boot=n_boot, seed=seed)

    value, knn = auroc("JEPA-SCORE"), auroc("k-NN (k=10)")
    records = [
        Verdict(
            key="ranking",
            claim="curation",
            statement="ranking a data set by JEPA-SCORE puts its corrupted and off-domain images last",
            setting=setting,
            measure="AUROC, clean vs corrupted and off-domain images",
            value=value,
            baseline=f"chance 0.5; k-NN on the same embeddings {knn}",
            outcome=decide(value, 0.5, margin=0.05),
            why=f"{int(clean.sum())} clean and {int(problems.sum())} problem images",
            chapter="curation",
        )
    ]
    jepa = at_k[at_k.detector == "JEPA-SCORE"].set_index("problem")
    for problem in PROBLEMS:
        row = jepa.loc[problem]
        precision = Interval(float(row.precision), float(row.low), float(row.high))
        records.append(
            Verdict(
                key=problem,
                claim="curation",
                statement=f"JEPA-SCORE finds the {problem} images of a data set",
                setting=setting,
                measure=f"precision among the {row.k} {row.direction} JEPA-SCOREs",
                value=precision,
                baseline=f"a random ranking: {format_interval(row.random, row.random_low, row.random_high, 2)}",
                outcome=decide(precision, float(row.random_high)),
                why=f"{round(row.precision * row.k)} of {row.k} found",
                chapter="curation",
            )
        )
    return records
