"""What the outlier-detection chapter measures: every detector of jepabook.detectors on the same
embeddings of the same image sets, for encoders that differ in size, loss and architecture.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from jepabook.detectors import Detector, Sample, embed_sample, evaluate
from jepabook.metrics import (
    bootstrap_auroc,
    bootstrap_mean_auroc,
    interval_strings,
    paired_difference,
    sides,
)
from jepabook.plots import DIVERGING_CMAP
from jepabook.verdicts import Verdict, decide
from jepabook.views import ImageViews

# row label -> (trained-here encoder name, recipe overrides); the first row is the reference encoder.
# The converged, shipped ResNet leads; the variants of size, loss and architecture are the short-training
# recipe (600 steps, about 1.3 epochs: a converged variant costs about an hour of CPU each), so the
# "CNN-16 · SIGReg" row is the same loss and data trained briefly: the before/after pair.
CONVERGED = "ResNet · SIGReg, converged"
SHORT = "CNN-16 · SIGReg"
OUTLIER_ENCODERS = {
    CONVERGED: ("fmnist-cnn", {}),
    SHORT: ("fmnist-cnn-short", {}),
    "CNN-8 · SIGReg": ("fmnist-cnn-short", {"width": 8}),
    "CNN-32 · SIGReg": ("fmnist-cnn-short", {"width": 32}),
    "CNN-16 · moments": ("fmnist-cnn-short", {"regulariser": "moments"}),
    "CNN-16 · no regulariser": ("fmnist-cnn-short", {"regulariser": "none"}),
    "ViT · SIGReg": ("fmnist-vit-short", {}),
}


def input_views(trained, **view_options) -> Callable[[torch.Tensor, torch.Generator], torch.Tensor]:
    """augment(x, generator) for MultiView: a random ImageViews view of normalised encoder inputs.

    The view is drawn in pixel space (x * std + mean) and normalised again, so crops and noise mean
    the same as in training. view_options: ImageViews arguments (min_area, degrees, flip, noise).
    """

    views = ImageViews(**view_options)
    mean, std = trained.meta["mean"], trained.meta["std"]

    def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return (views(x * std + mean, generator) - mean) / std

    return augment


def image_samples(
    trained, fit, inliers, outliers: dict
) -> tuple[Sample, Sample, dict[str, Sample]]:
    """Samples (embeddings, inputs, encoder, labels) of the fitting set, the in-distribution test set
    and every out-of-domain ImageSet, under one trained-here encoder."""

    def sample(images) -> Sample:
        return embed_sample(trained.encoder, trained.inputs(images), images.labels)

    return sample(fit), sample(inliers), {name: sample(s) for name, s in outliers.items()}


def detector_table(
    encoders: dict,
    detectors_for: Callable[[object], list[Detector]],
    fit,
    inliers,
    outliers: dict,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[pd.DataFrame, dict]:
    """evaluate() for every encoder: one row per (encoder, detector, set), and the scores.

    detectors_for(trained) -> the detectors to run on that encoder. The second result maps
    encoder -> detector -> set name (or "in-distribution") -> (n,) scores, for paired comparisons.
    """
    tables, scores = [], {}
    for label, trained in encoders.items():
        train, test, shifted = image_samples(trained, fit, inliers, outliers)
        detectors = detectors_for(trained)
        tables.append(evaluate(detectors, train, test, shifted, n_boot=n_boot, seed=seed))
        tables[-1].insert(0, "encoder", label)
        scores[label] = {
            d.name: {"in-distribution": d.score(test)} | {k: d.score(v) for k, v in shifted.items()}
            for d in detectors
        }
    return pd.concat(tables, ignore_index=True), scores


def with_intervals(table: pd.DataFrame, metric: str = "auroc", digits: int = 2) -> pd.Series:
    """'0.83 [0.79, 0.87]' strings of a metric and its interval, one per row of `table`."""
    return interval_strings(table, metric, digits=digits)


def head_to_head(
    scores: dict,
    challenger: str,
    baselines: list[str],
    *,
    control: str | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Paired AUROC difference challenger - baseline for every encoder, baseline and set.

    verdict: "wins" when the 95% interval of the difference lies above 0, "loses" below, "ties"
    otherwise. The control set (not out of domain) is left out.
    """
    rows = []
    for encoder, by_detector in scores.items():
        first = by_detector[challenger]
        for baseline in baselines:
            second = by_detector[baseline]
            for name in first:
                if name in ("in-distribution", control):
                    continue
                gap = paired_difference(
                    (first["in-distribution"], first[name]),
                    (second["in-distribution"], second[name]),
                    n_boot=n_boot,
                    seed=seed,
                )
                verdict = "wins" if gap.low > 0 else "loses" if gap.high < 0 else "ties"
                rows.append(
                    {"encoder": encoder, "baseline": baseline, "set": name,
                     "difference": gap.estimate, "low": gap.low, "high": gap.high,
                     "verdict": verdict}
                )  # fmt: skip
    return pd.DataFrame(rows)


def tally(duels: pd.DataFrame, by: str = "encoder") -> pd.DataFrame:
    """Counts of wins / ties / losses per `by` value (columns wins, ties, loses)."""
    counts = duels.groupby([by, "verdict"], sort=False).size().unstack(fill_value=0)
    return counts.reindex(columns=["wins", "ties", "loses"], fill_value=0)


def standing(table: pd.DataFrame, detector: str, control: str | None = None) -> pd.DataFrame:
    """Per encoder: the detector's mean AUROC over the out-of-domain sets, its rank among the
    detectors that encoder was scored with (1 = best; a detector run on other encoders only, such as
    the multi-view estimator, does not count), and the best detector with its mean."""
    ood = table if control is None else table[table.set != control]
    means = ood.groupby(["encoder", "detector"], sort=False).auroc.mean().unstack()
    ranks = means.rank(axis=1, ascending=False)
    return pd.DataFrame(
        {
            f"{detector} mean AUROC": means[detector],
            "rank": ranks[detector].astype(int),
            "of": means.notna().sum(axis=1),  # detectors this encoder was scored with
            "best detector": means.idxmax(axis=1),
            "best mean AUROC": means.max(axis=1),
        }
    ).loc[list(dict.fromkeys(table.encoder))]


def mean_auroc(table: pd.DataFrame, control: str | None = None) -> pd.DataFrame:
    """encoder x detector: mean AUROC over the out-of-domain sets."""
    ood = table if control is None else table[table.set != control]
    means = ood.groupby(["encoder", "detector"], sort=False).auroc.mean().unstack()
    return means.loc[list(dict.fromkeys(table.encoder)), list(dict.fromkeys(table.detector))]


def auroc_heatmap(ax, table: pd.DataFrame, encoder: str, title: str = ""):
    """Heat map of one encoder's AUROC, detectors (rows) x sets (columns), 0.5 = white."""

    grid = table[table.encoder == encoder].pivot(index="detector", columns="set", values="auroc")
    grid = grid.loc[list(dict.fromkeys(table.detector)), list(dict.fromkeys(table.set))]
    image = ax.imshow(grid.to_numpy(), cmap=DIVERGING_CMAP, vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=40, ha="right")
    ax.set_yticks(range(grid.shape[0]), grid.index)
    for (i, j), value in np.ndenumerate(grid.to_numpy()):
        ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7)
    ax.set_title(title or encoder)
    return image


def sets_by_encoder(rows: pd.DataFrame, encoders: list[str], value: str | None = None) -> pd.Series:
    """Per encoder, the sets named in `rows` (columns encoder, set and optionally `value`) as one
    string, "galaxies, faces" or with the value "galaxies (0.12), faces (0.30)"; "none" for an
    encoder without rows. For narrow tables of which (encoder, set) pairs share a verdict."""

    def text(row) -> str:
        return row.set if value is None else f"{row.set} ({getattr(row, value):.2f})"

    named = {encoder: [] for encoder in encoders}
    for row in rows.itertuples():
        named[row.encoder].append(text(row))
    return pd.Series({e: ", ".join(names) or "none" for e, names in named.items()})


def folder_samples(backbone, folders: dict[str, list]) -> tuple[Sample, Sample, dict[str, Sample]]:
    """Samples of image files under a pretrained backbone (its own preprocessing).

    folders: {set name: [paths]}; the first set is in-distribution, its files split in two halves:
    the first fits the detectors, the second is the in-distribution test sample.
    """
    from PIL import Image

    if not folders:
        raise ValueError("folders: expected at least the in-distribution set of image paths")
    device = next(backbone.encoder.parameters()).device

    def sample(paths: list) -> Sample:
        inputs = torch.stack([backbone.preprocess(Image.open(p).convert("RGB")) for p in paths])
        return embed_sample(backbone.encoder, inputs.to(device))

    (first, paths), *rest = folders.items()
    half = len(paths) // 2
    if half < 2:
        raise ValueError(f"folders: the in-distribution set {first!r} needs at least 4 images")
    return sample(paths[:half]), sample(paths[half:]), {name: sample(p) for name, p in rest}


def detection_verdict(
    jepa: tuple[np.ndarray, dict[str, np.ndarray]],
    knn: tuple[np.ndarray, dict[str, np.ndarray]],
    *,
    statement: str,
    setting: str,
    chapter: str,
    n_boot: int = 1000,
    seed: int = 0,
) -> Verdict:
    """The claim "a low JEPA-SCORE flags out-of-domain inputs" as a record, from JEPA-SCORE's and
    k-NN's (in-distribution scores (n,), {set: scores (m_s,)}): JEPA-SCORE's mean AUROC over the
    sets, reproduced when its interval lies above 0.55 and no set is inverted (interval below 0.5)."""
    inliers, outliers = jepa
    value = bootstrap_mean_auroc(inliers, outliers, n_boot=n_boot, seed=seed)
    per_set = {
        s: bootstrap_auroc(inliers, v, n_boot=n_boot, seed=seed) for s, v in outliers.items()
    }
    inverted = sides(per_set)["below"]
    outcome = decide(value, 0.5, margin=0.05)
    knn_mean = bootstrap_mean_auroc(*knn, n_boot=n_boot, seed=seed)
    return Verdict(
        key="detects",
        claim="outlier detection",
        statement=statement,
        setting=setting,
        measure=f"JEPA-SCORE mean AUROC over {len(outliers)} out-of-domain sets",
        value=value,
        baseline=f"chance 0.5; k-NN on the same embeddings {knn_mean}",
        outcome="partly" if outcome == "reproduced" and inverted else outcome,
        why=f"inverted (interval below 0.5) on {len(inverted)}: {', '.join(inverted) or 'none'}",
        chapter=chapter,
    )


def outlier_verdicts(
    by_detector: dict[str, dict[str, np.ndarray]],
    *,
    control: str,
    multi_view: str,
    knn: str = "k-NN (k=10)",
    tally_line: str = "",
    setting: str,
    n_boot: int = 1000,
    seed: int = 0,
) -> list[Verdict]:
    """The chapter's claims as verdict records, from one encoder's scores {detector: {set: (n,)}}
    ("in-distribution" and the shifted sets; `control` is left out).

    - outlier detection: JEPA-SCORE's mean AUROC over the shifted sets (reproduced when its interval
      lies above 0.55 and no set is inverted);
    - outlier detection, against k-NN on the same embeddings: the paired difference of mean AUROC
      (reproduced when its interval lies above -0.02, i.e. JEPA-SCORE is at least level);
    - eq. (4): multi-view minus single-view JEPA-SCORE, paired (reproduced when above 0).
    """

    def split(name: str) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        sets = by_detector[name]
        return sets["in-distribution"], {
            s: v for s, v in sets.items() if s not in ("in-distribution", control)
        }

    jepa_in, jepa_out = split("JEPA-SCORE")
    versus = bootstrap_mean_auroc(jepa_in, jepa_out, baseline=split(knn), n_boot=n_boot, seed=seed)
    views = bootstrap_mean_auroc(
        *split(multi_view), baseline=(jepa_in, jepa_out), n_boot=n_boot, seed=seed
    )
    common = {"setting": setting, "chapter": "outlier_detection"}
    return [
        detection_verdict(
            (jepa_in, jepa_out),
            split(knn),
            statement="a low JEPA-SCORE flags out-of-distribution images",
            n_boot=n_boot,
            seed=seed,
            **common,
        ),
        Verdict(
            key="versus-knn",
            claim="outlier detection",
            statement="JEPA-SCORE is as good an outlier score as k-NN distances on the same embeddings",
            measure="mean AUROC, JEPA-SCORE minus k-NN (paired)",
            value=versus,
            baseline="level: 0 (reproduced when the interval lies above -0.02)",
            outcome=decide(versus, -0.02),
            why=tally_line or "paired bootstrap over the same images",
            **common,
        ),
        Verdict(
            key="views",
            claim="eq. (4)",
            statement=(
                "averaging over views, -logmeanexp of -JEPA-SCORE (eq. 4), "
                "estimates the density better than one view"
            ),
            measure=f"mean AUROC, {multi_view} minus JEPA-SCORE (paired)",
            value=views,
            baseline="no gain: 0",
            outcome=decide(views, 0.0),
            why="the same images, the views drawn from the training augmentations",
            **common,
        ),
    ]
