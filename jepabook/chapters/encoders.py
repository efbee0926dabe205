"""The encoders chapter: what the manifest says of the shipped encoders, their learning curves, and
a live k-NN check of shipped weights against pixels and random weights.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from torch import nn

from jepabook import shipped
from jepabook.image_jepa import (
    SPLIT_SIZES,
    TrainedEncoder,
    load_shipped,
    probe_sets,
    untrained_like,
)
from jepabook.metrics import Interval
from jepabook.plots import PALETTE, figure, label_panels
from jepabook.probe import embed, knn_correct


def learning_curve_figure(curves: pd.DataFrame):
    """Probe accuracy (k-NN, of the output and the backbone) and held-out SIGReg against passes over
    the training set, one line per encoder; curves as `image_jepa.learning_curves` returns them."""
    import seaborn as sns

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


def shipped_summary(rows: dict[str, str]) -> pd.DataFrame:
    """What the manifest says of shipped encoders, one row per {label: name}: training images,
    passes, steps, probes of the output (and backbone) with 95% intervals, against pixels and the
    same network with random weights, and the held-out SIGReg at the end of training."""
    manifest = shipped.read_manifest()
    table = {}
    for label, name in rows.items():
        if name not in manifest:
            raise ValueError(f"rows: {name} has no entry in {shipped.manifest_path()}")
        entry, probes = manifest[name], manifest[name]["probes"]
        row = {
            "training images": entry["recipe"]["n_train"] or SPLIT_SIZES[entry["recipe"]["dataset"]]
        }
        row |= {"epochs": entry["epochs"], "steps": entry["steps"]}
        for feature in ("output", "backbone"):
            for probe in ("linear", "knn"):
                if feature in probes:
                    key = f"{probe} ({feature})"
                    row[key] = str(Interval(*probes[feature][probe]))
                    for base in ("pixels", "random"):
                        difference = probes[feature].get(f"{probe}_minus_{base}")
                        if difference is not None and feature == "output":
                            row[f"{probe} − {base}"] = str(Interval(*difference))
        row["held-out SIGReg"] = round(entry["learning_curve"]["held_out_sigreg"], 2)
        table[label] = row
    return pd.DataFrame(table).T


def learning_curves(rows: dict[str, str], scale: str = "default") -> pd.DataFrame:
    """Long table of the shipped encoders' learning curves, one row per (encoder, evaluation):
    encoder (label), step, epoch, metric, value. Metrics: "knn", "knn_backbone" (the k-NN probe of
    the output and the backbone), "held_out_sigreg" (SIGReg of 1,024 held-out images' embeddings),
    "train_regulariser" (the anti-collapse term on the training views, mean since the last evaluation)."""
    frames = []
    for label, name in rows.items():
        trained = load_shipped(name, scale)
        steps, evaluations = trained.history.to_frame()
        window = np.searchsorted(evaluations.step.to_numpy(), steps.step.to_numpy())  # next eval
        mean = steps.regulariser.groupby(window).mean()
        evaluations["train_regulariser"] = mean.reindex(range(len(evaluations))).to_numpy()
        epochs = trained.meta["recipe"]["batch_size"] / trained.meta["n_train"]
        long = evaluations.melt(id_vars="step", var_name="metric", value_name="value")
        frames.append(long.assign(encoder=label, epoch=(long.step + 1) * epochs))
    return pd.concat(frames, ignore_index=True)[["encoder", "step", "epoch", "metric", "value"]]


def knn_against_baselines(
    trained: TrainedEncoder, n_fit: int = 10000, n_test: int = 2000, seed: int = 0
) -> dict[str, np.ndarray]:
    """Per-sample k-NN outcomes (n_test,) bool of the encoder's output, of raw pixels and of the same
    network with random weights: the first n_fit training images as neighbours, the first n_test
    held-out images as queries. A quick check that shipped weights have learned."""
    dataset = trained.meta["dataset"]
    fit, test = probe_sets(dataset, min(n_fit, SPLIT_SIZES[dataset]), n_test)
    random = untrained_like(trained, seed=seed)

    def knn(encoder: nn.Module) -> np.ndarray:
        a, b = (embed(encoder, trained.inputs(s)) for s in (fit, test))
        return knn_correct(a, fit.labels, b, test.labels)

    return {
        "JEPA": knn(trained.encoder),
        "pixels": knn_correct(fit.images, fit.labels, test.images, test.labels),
        "random weights": knn(random.encoder),
    }
