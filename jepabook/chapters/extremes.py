"""The extremes chapter (Figures 1, 4, 5): the least and most likely images of a class, and whether
encoders agree on them beyond shuffled, random-weight and pixel-statistic baselines.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from jepabook.plots import figure, image_strip

AGREEMENT_COLUMNS = {
    "spearman": "Spearman",
    "tail_overlap": "tail overlap",
    "spearman_shuffled": "Spearman, shuffled",
    "tail_overlap_shuffled": "tail overlap, shuffled",
    "partial_spearman": "partial Spearman",
}
"""Column labels of `agreement` tables as the chapter shows them (short, and breakable between words)."""


def extremes(
    scores: np.ndarray, labels: np.ndarray, k: int = 5
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per class: indices of the k least likely (lowest score first) and the k most likely (highest first)."""
    result = {}
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        order = members[np.argsort(scores[members], kind="stable")]
        result[int(label)] = (order[:k], order[::-1][:k])
    return result


def tail_overlap(a: np.ndarray, b: np.ndarray, labels: np.ndarray, fraction: float = 0.1) -> float:
    """Mean over classes and over both tails of |A ∩ B| / |A|: A, B = each score's `fraction` tail.

    Two independent scores overlap by `fraction` on average (the chance level).
    """
    overlaps = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        m = max(1, int(round(fraction * len(members))))
        order_a, order_b = np.argsort(a[members]), np.argsort(b[members])
        for tail in (slice(None, m), slice(-m, None)):
            overlaps.append(len(np.intersect1d(order_a[tail], order_b[tail])) / m)
    return float(np.mean(overlaps))


def within_class_spearman(a: np.ndarray, b: np.ndarray, labels: np.ndarray) -> float:
    """Mean over classes of the Spearman correlation of two scores of the same images."""
    values = [stats.spearmanr(a[labels == c], b[labels == c]).statistic for c in np.unique(labels)]
    return float(np.mean(values))


def partial_spearman(
    a: np.ndarray, b: np.ndarray, controls: list[np.ndarray], labels: np.ndarray
) -> float:
    """Mean over classes of the Spearman correlation of a and b (n,) beyond what `controls` explain.

    Within each class the ranks of a and b are regressed (least squares, with an intercept) on the
    ranks of every control (n,); the result is the Pearson correlation of the two residuals.
    """
    values = []
    for c in np.unique(labels):
        members = labels == c
        design = np.column_stack(
            [np.ones(members.sum())] + [stats.rankdata(x[members]) for x in controls]
        )
        residuals = []
        for x in (a, b):
            ranks = stats.rankdata(x[members])
            residuals.append(ranks - design @ np.linalg.lstsq(design, ranks, rcond=None)[0])
        values.append(stats.pearsonr(*residuals).statistic)
    return float(np.mean(values))


def agreement(
    scores: dict[str, np.ndarray],
    labels: np.ndarray,
    *,
    fraction: float = 0.1,
    seed: int = 0,
    controls: dict[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """For every pair of scores: within-class Spearman, tail overlap, and the same for a shuffled control.

    The control permutes the second score within each class, which keeps its distribution and
    destroys any relation to the images. With `controls` ({name: (n,)}, e.g. a random-weight
    network's score and the amount of ink), a column "partial_spearman" gives the within-class
    agreement beyond them (`partial_spearman`; pairs that include a control are left NaN).
    """
    rng = np.random.default_rng(seed)
    names, rows = list(scores), []
    for i, first in enumerate(names):
        for second in names[i + 1 :]:
            a, b = scores[first], scores[second]
            shuffled = _shuffle_within(b, labels, rng)
            rows.append(
                {
                    "pair": f"{first} / {second}",
                    "spearman": within_class_spearman(a, b, labels),
                    "tail_overlap": tail_overlap(a, b, labels, fraction),
                    "spearman_shuffled": within_class_spearman(a, shuffled, labels),
                    "tail_overlap_shuffled": tail_overlap(a, shuffled, labels, fraction),
                }
            )
            if controls:
                given = list(controls.values())
                beyond = first not in controls and second not in controls
                rows[-1]["partial_spearman"] = (
                    partial_spearman(a, b, given, labels) if beyond else np.nan
                )
    return pd.DataFrame(rows)


def check(
    a: np.ndarray,
    b: np.ndarray,
    labels: np.ndarray,
    *,
    margin: float = 0.2,
    n_shuffles: int = 200,
    seed: int = 0,
) -> float:
    """Figure 1's claim at its weakest: two JEPAs' scores (n,) rank the images of each class more
    alike than within-class shuffles of one of them do: the within-class Spearman must exceed the
    shuffles' mean by `margin` and by three of their standard deviations. Returns the Spearman.

    A flipped, shuffled or constant score fails: its agreement is negative, at chance, or undefined.
    """
    rng = np.random.default_rng(seed)
    spearman = within_class_spearman(a, b, labels)
    null = [
        within_class_spearman(a, _shuffle_within(b, labels, rng), labels) for _ in range(n_shuffles)
    ]
    bar = float(np.mean(null)) + max(margin, 3 * float(np.std(null)))
    assert spearman > bar, (
        f"Figure 1 agreement of two JEPAs: within-class Spearman {spearman:.3f} is not above "
        f"{bar:.3f} (within-class shuffles: mean {np.mean(null):.3f}, sd {np.std(null):.3f})"
    )
    return spearman


def _shuffle_within(values: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    shuffled = values.copy()
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        shuffled[members] = values[rng.permutation(members)]
    return shuffled


def extremes_figure(
    thumbnails: np.ndarray,
    labels: np.ndarray,
    classes: list[str],
    scores: dict[str, np.ndarray],
    *,
    show: list[int],
    k: int = 5,
    seed: int = 0,
):
    """Figure 1/4/5 layout: for each class in `show`, one row per encoder with its k least likely,
    k random and k most likely images (thumbnails (N, H, W) or (N, H, W, 3)).
    """

    rng = np.random.default_rng(seed)
    names = list(scores)
    fig, axes = figure(3, len(show) * len(names), width=2.6, height=0.75, squeeze=False)
    for i, label in enumerate(show):
        members = np.flatnonzero(labels == label)
        random_pick = rng.choice(members, k, replace=False)
        for j, name in enumerate(names):
            least, most = extremes(scores[name], labels, k)[label]
            row = axes[i * len(names) + j]
            prefix = f"{classes[label]} · {name}"
            image_strip(row[0], thumbnails[least], title=f"{prefix}: least likely")
            image_strip(row[1], thumbnails[random_pick], title="random")
            image_strip(row[2], thumbnails[most], title="most likely")
    return fig


def agreement_by_kind(table: pd.DataFrame, kinds: dict[str, str]) -> pd.DataFrame:
    """Mean of `agreement`'s columns over pairs grouped by the kinds of their two scores.

    kinds: score name -> kind (e.g. "JEPA", "random init", "ink"); a pair's group is "kind / kind".
    """

    def group(pair: str) -> str:
        return " / ".join(sorted(kinds[name] for name in pair.split(" / ")))

    numeric = table.drop(columns="pair")
    return numeric.groupby(table.pair.map(group)).mean().rename_axis("pair kind")
