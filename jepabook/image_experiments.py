"""What the image chapters measure: JEPA-SCORE of image sets, extremes per class, agreement between
encoders, out-of-domain AUROC and the Jacobian's singular vectors.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from scipy import stats
from torch import nn
from tqdm.auto import tqdm

from jepabook.book import resolve_device
from jepabook.datasets import ImageSet
from jepabook.image_jepa import (
    held_out_images,
    load_shipped,
    train_image_encoder,
    untrained_like,  # noqa: F401 (the chapters' random-weight control)
)
from jepabook.jacobian import jacobian_rows
from jepabook.score import eval_mode, jepa_score


def score_images(
    encoder: nn.Module,
    inputs: torch.Tensor,
    *,
    batch_size: int = 8,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> np.ndarray:
    """JEPA-SCORE (N,) of encoder inputs (N, C, H, W), batch by batch with a progress bar.

    device: where to compute (None: where the encoder is; "auto": CUDA when present). Small batches
    are the fastest on a CPU (8 images: 23 ms per image for the book's CNN against 33 ms with 32);
    on a GPU, larger ones pay off.
    """
    if device is not None:
        encoder = encoder.to(resolve_device(device))
    target = next(encoder.parameters()).device
    starts = range(0, len(inputs), batch_size)
    parts = [
        jepa_score(encoder, inputs[i : i + batch_size].to(target), chunk_size=batch_size)
        .cpu()
        .numpy()
        for i in tqdm(starts, disable=not progress, desc="JEPA-SCORE", leave=False)
    ]
    return np.concatenate(parts) if parts else np.zeros(0)


def per_class(images: ImageSet, n: int, seed: int = 0) -> ImageSet:
    """A class-balanced random subset: n images of every class, in class order."""
    if images.labels is None:
        raise ValueError(f"images: {images.name} has no labels")
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in range(len(images.classes)):
        members = torch.nonzero(images.labels == label).squeeze(1)
        if len(members) < n:
            raise ValueError(f"n: class {label} has only {len(members)} images, asked for {n}")
        chosen.append(members[torch.randperm(len(members), generator=generator)[:n]])
    return images.subset(torch.cat(chosen))


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


def _shuffle_within(values: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    shuffled = values.copy()
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        shuffled[members] = values[rng.permutation(members)]
    return shuffled


def singular_vectors(
    encoder: nn.Module, x: torch.Tensor, k: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """Singular values (min(K, D),) and top-k right-singular vectors (k, *x.shape[1:]) of J_f at x (1, ...).

    The right-singular vectors are the input directions the encoder stretches most; their signs are
    fixed so that each has a positive sum.
    """
    if x.shape[0] != 1:
        raise ValueError(f"x: expected one sample (1, ...), got a batch of {x.shape[0]}")
    with eval_mode(encoder), torch.enable_grad():
        K = encoder(x).shape[1]
        J = jacobian_rows(encoder, x, K)[0].detach().double()  # (K, D)
    _, sigma, vh = torch.linalg.svd(J, full_matrices=False)
    top = vh[:k] * torch.sign(vh[:k].sum(1, keepdim=True) + 1e-30)
    return sigma, top.reshape(k, *x.shape[1:]).float()


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
    from jepabook.plots import figure, image_strip

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


def folder_images(
    image_dir, per_class: int | None = None, seed: int = 0
) -> tuple[list, np.ndarray, list[str]]:
    """Images of a folder whose sub-folders are classes (an ImageNet-style layout).

    Returns (paths, labels (N,), classes); at most `per_class` random files of each class.
    """
    from pathlib import Path

    root = Path(image_dir)
    if not root.is_dir():
        raise ValueError(f"image_dir: expected a folder of class sub-folders, got {image_dir!r}")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"image_dir: {image_dir} holds no class sub-folders")
    rng = np.random.default_rng(seed)
    paths, labels = [], []
    for label, name in enumerate(classes):
        files = sorted(p for p in (root / name).iterdir() if p.is_file())
        if per_class is not None and len(files) > per_class:
            files = [files[i] for i in sorted(rng.choice(len(files), per_class, replace=False))]
        paths += files
        labels += [label] * len(files)
    return paths, np.asarray(labels), classes


def score_paths(backbone, paths: list, *, batch_size: int = 8, progress: bool = True) -> np.ndarray:
    """JEPA-SCORE (N,) of image files under a pretrained backbone (its own preprocessing)."""
    from PIL import Image

    device = next(backbone.encoder.parameters()).device
    inputs = [backbone.preprocess(Image.open(p).convert("RGB")) for p in paths]
    return score_images(
        backbone.encoder, torch.stack(inputs).to(device), batch_size=batch_size, progress=progress
    )


def thumbnails_of(paths: list, size: int = 64) -> np.ndarray:
    """(N, size, size, 3) uint8 centre-cropped thumbnails of image files, for figures."""
    from PIL import Image, ImageOps

    return np.stack(
        [np.asarray(ImageOps.fit(Image.open(p).convert("RGB"), (size, size))) for p in paths]
    )


# ---------------------------------------------------------------- the encoders of the image chapters

FMNIST_ENCODERS = {
    "CNN · SIGReg": ("fmnist-cnn", {}),
    "CNN · SIGReg, short training": ("fmnist-cnn-short", {}),
    "ViT · SIGReg, short training": ("fmnist-vit-short", {}),
    "CNN · moments, short training": ("fmnist-cnn-short", {"regulariser": "moments"}),
}
"""The extremes chapter's JEPAs: row label -> (trained-here name, recipe overrides). The converged
CNN first; the short-training encoders (600 steps, about 1.3 epochs) keep the book's first verdicts
computable beside it."""


def trained_encoders(
    scale: str, rows: dict | None = None, *, device: str = "auto", progress: bool = True
) -> dict:
    """{row label: TrainedEncoder} for rows {label: (name, recipe overrides)}: the shipped weights
    when there are no overrides (never trained here), else trained at `scale` (or loaded from cache)."""
    rows = FMNIST_ENCODERS if rows is None else rows
    return {
        label: train_image_encoder(name, scale, device=device, progress=progress, **options)
        if options
        else load_shipped(name)
        for label, (name, options) in rows.items()
    }


def probe_accuracies(encoders: dict, train: ImageSet, test: ImageSet) -> pd.Series:
    """Linear-probe test accuracy of each encoder's embedding, beside the raw-pixel probe."""
    from jepabook.probe import embed, linear_probe

    accuracy = {"raw pixels": linear_probe(train.images, train.labels, test.images, test.labels)}
    for label, trained in encoders.items():
        fit, held = (embed(trained.encoder, trained.inputs(s)) for s in (train, test))
        accuracy[label] = linear_probe(fit, train.labels, held, test.labels)
    return pd.Series(accuracy, name="linear-probe accuracy")


def agreement_by_kind(table: pd.DataFrame, kinds: dict[str, str]) -> pd.DataFrame:
    """Mean of `agreement`'s columns over pairs grouped by the kinds of their two scores.

    kinds: score name -> kind (e.g. "JEPA", "random init", "ink"); a pair's group is "kind / kind".
    """

    def group(pair: str) -> str:
        return " / ".join(sorted(kinds[name] for name in pair.split(" / ")))

    numeric = table.drop(columns="pair")
    return numeric.groupby(table.pair.map(group)).mean().rename_axis("pair kind")


def learning_curve_figure(curves: pd.DataFrame):
    """Probe accuracy (k-NN, of the output and the backbone) and held-out SIGReg against passes over
    the training set, one line per encoder; curves as `image_jepa.learning_curves` returns them."""
    import seaborn as sns

    from jepabook.plots import PALETTE, figure, label_panels

    fig, axes = figure(3, 1, width=3.4, height=2.9)
    panels = [
        ("knn", "k-NN accuracy, output"),
        ("knn_backbone", "k-NN accuracy, backbone"),
        ("held_out_sigreg", "SIGReg (log scale)"),
    ]
    colours = dict(zip(curves.encoder.unique(), sns.color_palette(PALETTE), strict=False))
    for ax, (metric, title) in zip(axes, panels, strict=True):
        for encoder, part in curves[curves.metric == metric].groupby("encoder", sort=False):
            ax.plot(part.epoch, part.value, marker=".", label=encoder, color=colours[encoder])
        ax.set(title=title, xlabel="passes over the training set")
    training = curves[(curves.metric == "train_regulariser") & (curves.step > 0)]
    for encoder, part in training.groupby("encoder", sort=False):
        axes[2].plot(part.epoch, part.value, ls="--", color=colours[encoder])
    axes[2].set_yscale("log")
    axes[2].text(0.97, 0.95, "solid: held-out images\ndashed: training views", ha="right", va="top",
                 transform=axes[2].transAxes, fontsize=8)  # fmt: skip
    axes[0].legend(loc="lower right", fontsize=7)
    label_panels(axes)
    return fig, axes


# ---------------------------------------------------------------- out-of-domain data (Figure 3)


IN_DOMAIN_NAMES = {"fashion-mnist": "Fashion-MNIST", "mnist": "MNIST"}


def out_of_domain_sets(in_domain: str, n: int, seed: int = 0, *, skip: int = 0) -> dict:
    """{name: ImageSet}: a control and seven out-of-domain sets of (at most) n images each.

    - "<in-domain> (other held-out images)": unshifted held-out images, a control (AUROC ~ 0.5);
    - the other digit/fashion set (MNIST for Fashion-MNIST encoders and vice versa);
    - Hubble galaxy crops, faces (scikit-image's 100), natural-image patches;
    - inverted, edge-sketch and rotated renditions of held-out in-domain images.
    The in-domain images used are held_out_images(in_domain)[skip : skip + 2n], so the chapter's
    in-distribution sample (the first `skip`) is not reused.
    """
    from jepabook import datasets

    if in_domain not in IN_DOMAIN_NAMES:
        raise ValueError(f"in_domain: expected one of {sorted(IN_DOMAIN_NAMES)}, got {in_domain!r}")
    held_out = held_out_images(in_domain)
    other_domain = "mnist" if in_domain == "fashion-mnist" else "fashion-mnist"
    other = held_out_images(other_domain)
    generator = torch.Generator().manual_seed(seed)
    shifted_base = held_out.subset(slice(skip + n, skip + 2 * n))
    return {
        f"{IN_DOMAIN_NAMES[in_domain]} (other held-out images)": held_out.subset(
            slice(skip, skip + n)
        ),
        IN_DOMAIN_NAMES[other_domain]: other.subset(
            torch.randperm(len(other), generator=generator)[:n]
        ),
        "galaxies": datasets.galaxy_crops(n, seed=seed, messier=False),
        "faces": datasets.faces().subset(slice(0, n)),
        "natural patches": datasets.natural_patches(n, seed=seed),
        **{kind: datasets.shifted(shifted_base, kind) for kind in datasets.SHIFTS},
    }


def score_sets(trained, sets: dict, *, device=None, progress: bool = True) -> dict[str, np.ndarray]:
    """{set name: JEPA-SCORE (n,)} of every image set under one trained-here encoder."""
    return {
        name: score_images(
            trained.encoder, trained.inputs(images), device=device, progress=progress
        )
        for name, images in sets.items()
    }


def auroc_table(
    inliers: dict[str, np.ndarray],
    outliers: dict[str, dict[str, np.ndarray]],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """AUROC of separating in-distribution from each out-of-domain set by the score (higher = inlier).

    inliers: {encoder: (n,) scores}; outliers: {encoder: {set: (m,) scores}}.
    Returns one row per (encoder, set) with the AUROC and its bootstrap interval.
    """
    from jepabook.metrics import bootstrap_auroc

    rows = []
    for encoder, sets in outliers.items():
        for name, values in sets.items():
            interval = bootstrap_auroc(inliers[encoder], values, n_boot=n_boot, seed=seed)
            rows.append(
                {"encoder": encoder, "set": name, "auroc": interval.estimate,
                 "low": interval.low, "high": interval.high}
            )  # fmt: skip
    return pd.DataFrame(rows)


def score_distributions(ax, inliers: np.ndarray, outliers: dict[str, np.ndarray], title: str = ""):
    """Figure 3 panel: box plots of the in-distribution scores and of each out-of-domain set."""
    data = [inliers, *outliers.values()]
    names = ["in-distribution", *outliers]
    ax.boxplot(data, vert=False, showfliers=False, widths=0.6)
    ax.set_yticks(range(1, len(names) + 1), names)
    ax.invert_yaxis()
    ax.set_xlabel("JEPA-SCORE")
    ax.set_title(title)


# ---------------------------------------------------------------- singular vectors (appendix figure)


def support_fraction(
    vectors: torch.Tensor, image: torch.Tensor, threshold: float = 0.1
) -> np.ndarray:
    """Share of each vector's squared norm on the image's support (pixels above `threshold`).

    vectors: (k, 1, H, W) unit vectors; image: (1, H, W) pixels in [0, 1]. A vector spread
    uniformly over the image gives the support's share of pixels (returned by `support_share`).
    """
    support = (image > threshold).float()
    return (vectors.pow(2) * support).flatten(1).sum(1).numpy()


def support_share(image: torch.Tensor, threshold: float = 0.1) -> float:
    """Fraction of pixels of an image (1, H, W) above `threshold`: the chance level of support_fraction."""
    return float((image > threshold).float().mean())


def spectrum_figure(
    images: torch.Tensor, spectra: dict[str, list], vectors: dict[str, list], k: int = 6
):
    """Appendix-figure layout: per image, the image and its top-k right-singular vectors for each
    encoder (rows), and the singular-value spectra (last column, log scale)."""
    from jepabook.plots import DIVERGING_CMAP, figure

    names = list(spectra)
    fig, axes = figure(k + 2, len(images) * len(names), width=1.15, height=1.15, squeeze=False)
    for i, image in enumerate(images):
        for j, name in enumerate(names):
            row = axes[i * len(names) + j]
            row[0].imshow(image[0], cmap="gray")
            row[0].set_title(name, fontsize=7, loc="left")
            for c in range(k):
                v = vectors[name][i][c, 0]
                row[c + 1].imshow(v, cmap=DIVERGING_CMAP, vmin=-abs(v).max(), vmax=abs(v).max())
                if i == 0 and j == 0:
                    row[c + 1].set_title(f"v{c + 1}", fontsize=8)
            row[-1].semilogy(spectra[name][i].numpy())
            row[-1].tick_params(labelsize=6)
            for ax in row[:-1]:
                ax.set_axis_off()
    return fig


def spectrum_statistics(encoders: dict, images: ImageSet, k: int = 8) -> pd.DataFrame:
    """Per encoder and image: how the Jacobian's spectrum and top-k singular vectors look.

    Columns: score_error (relative gap between sum of log sigma and jepa_score), top8_energy (share
    of ||J||_F^2 = sum sigma^2 in the 8 largest singular values), condition (sigma_1 / sigma_min), on_support
    (mean energy of v_1..v_k on the image's support), support_share (its pixel share).
    """
    rows = []
    for name, trained in encoders.items():
        scores = score_images(trained.encoder, trained.inputs(images), progress=False)
        for image, score in zip(images.images, scores, strict=True):
            sigma, v = singular_vectors(trained.encoder, trained.inputs(image[None]), k)
            log_sigma = sigma.clamp(min=1e-6).log()
            rows.append(
                {
                    "encoder": name,
                    "score_error": abs(float(log_sigma.sum()) - score) / abs(score),
                    "top8_energy": float(sigma[:8].pow(2).sum() / sigma.pow(2).sum()),
                    "condition": float(sigma[0] / sigma[-1]),
                    "on_support": float(support_fraction(v, image).mean()),
                    "support_share": support_share(image),
                }
            )
    return pd.DataFrame(rows)
