"""The natural-images chapter: CIFAR-10 under real ImageNet-pretrained CNNs (and the CIFAR JEPAs
once shipped): which encoders, the published numbers to stand beside, the detector table, and the
chapter's checks and verdicts.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from PIL import Image
from skimage import data

from jepabook import natural_ood
from jepabook.backbones import load_backbone
from jepabook.detectors import KNN, ChangeOfVariables, JepaScore, Mahalanobis, Sample, evaluate
from jepabook.image_jepa import load_shipped, shipped_encoders, untrained_like
from jepabook.imagenet_cnns import imagenet_classes
from jepabook.metrics import Interval, bootstrap_auroc, bootstrap_mean_auroc, sides
from jepabook.score import jepa_score
from jepabook.verdicts import Verdict, decide

IMAGENET_CNNS = {"mobilenetv2-in1k": "MobileNetV2", "efficientnet-lite0-in1k": "EfficientNet-Lite0"}
CIFAR_JEPAS = {"cifar10-resnet18": "CIFAR JEPA (ResNet-18)", "cifar10-cnn": "CIFAR JEPA (small)"}
"""The JEPAs trained here on CIFAR-10: the GPU recipe's ResNet-18 and the CPU recipe's small ResNet."""
LABELS = {**IMAGENET_CNNS, **CIFAR_JEPAS}

PUBLISHED = pd.DataFrame(
    [
        ("DINOv2 ViT-S", "SVHN", "JEPA-SCORE", 0.84),
        ("DINOv2 ViT-S", "SVHN", "k-NN", 0.97),
        ("DINOv2 ViT-S", "SVHN", "Mahalanobis", 1.00),
        ("DINOv2 ViT-L", "SVHN", "JEPA-SCORE", 0.48),
        ("MetaCLIP", "SVHN", "JEPA-SCORE", 0.02),
    ],
    columns=["encoder", "out-of-domain set", "detector", "AUROC"],
)
"""jepa-score-eval, CIFAR-10 test as in-distribution: quoted references, not results of this book."""

HEADLINE_SETS = ("MNIST digits", "galaxies", "textures")
"""The sets of the detection check: the three furthest from photographs of objects."""

DETECTORS = {
    "JEPA-SCORE": "JEPA-SCORE",
    "JEPA-SCORE + log N (fitted)": "full estimator (fitted Gaussian)",
    "k-NN (k=10)": "k-NN",
    "Mahalanobis": "Mahalanobis",
}
"""detector name in `jepabook.detectors` -> the label the chapter shows."""


def default_encoders(shipped: tuple[str, ...] | None = None) -> list[str]:
    """The two ImageNet CNNs, and the CIFAR JEPAs whose weights are shipped."""
    shipped = shipped_encoders() if shipped is None else shipped
    return list(IMAGENET_CNNS) + [name for name in CIFAR_JEPAS if name in shipped]


def load(
    name: str, size: int, calibrate, *, random: bool = True, seed: int = 0
) -> dict[str, natural_ood.PixelEncoder]:
    """{label: PixelEncoder}: the encoder `name` and, with `random`, the same network with random
    weights (BatchNorm calibrated on `calibrate` (N, 3, 32, 32) pixels, labelled "<label> · random").
    A CIFAR JEPA runs at 32 px, its own size."""
    label = LABELS[name]
    if name in CIFAR_JEPAS:
        trained = load_shipped(name)
        nets = {label: natural_ood.trained_encoder(trained)}
        if random:
            nets[f"{label} · random"] = natural_ood.trained_encoder(
                untrained_like(trained, seed=seed)
            )
        return nets
    nets = {label: natural_ood.imagenet_encoder(name, size)}
    if random:
        nets[f"{label} · random"] = natural_ood.imagenet_encoder(
            name, size, pretrained=False, calibrate=calibrate, seed=seed
        )
    return nets


def imagenet_top(
    name: str, photos: tuple[str, ...] = ("chelsea", "coffee"), k: int = 3
) -> list[str]:
    """The k most likely ImageNet classes of scikit-image photos under an ImageNet CNN at its own
    224 px preprocessing: one comma-separated string per photo."""
    backbone = load_backbone(name)
    x = torch.stack([backbone.preprocess(Image.fromarray(getattr(data, p)())) for p in photos])
    classes = imagenet_classes()
    top = backbone.imagenet_logits(x).topk(k).indices.tolist()
    return [", ".join(classes[i] for i in row) for row in top]


def detector_table(
    encoder,
    fit: np.ndarray,
    inliers: tuple[np.ndarray, np.ndarray],
    outliers: dict[str, tuple[np.ndarray, np.ndarray]],
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[pd.DataFrame, dict]:
    """JEPA-SCORE, the full estimator (fitted Gaussian), k-NN and Mahalanobis on the same embeddings.

    fit: (n_fit, K) embeddings of CIFAR-10 training images; inliers and each outlier set:
    (embeddings (n, K), JEPA-SCORE (n,)) computed beforehand. Returns `detectors.evaluate`'s table
    (auroc, fpr95, ... with intervals) and {detector: {"in-distribution" | set: scores (n,)}}.
    """

    def sample(z: np.ndarray, jepa: np.ndarray) -> Sample:
        placeholder = np.zeros((len(z), 1), dtype=np.float32)  # JEPA-SCORE is read from the cache
        return Sample(z, placeholder, encoder, cache={"jepa-score": np.asarray(jepa)})

    detectors = [JepaScore(), ChangeOfVariables("fitted"), KNN(10), Mahalanobis()]
    test, sets = sample(*inliers), {name: sample(*pair) for name, pair in outliers.items()}
    table = evaluate(detectors, Sample(fit), test, sets, n_boot=n_boot, seed=seed)
    scores = {
        d.name: {"in-distribution": d.score(test)} | {k: d.score(v) for k, v in sets.items()}
        for d in detectors
    }
    return table, scores


def check_detection(in_scores: np.ndarray, out_scores: np.ndarray, name: str) -> Interval:
    """The chapter's detection check: the pretrained CNN's JEPA-SCORE puts the out-of-domain set
    `name` below CIFAR-10 (AUROC interval above 0.6). A flipped, shuffled or constant score fails."""
    auroc = bootstrap_auroc(in_scores, out_scores, n_boot=200, seed=0)
    assert auroc.low > 0.6, f"{name} vs CIFAR-10 AUROC {auroc}: interval not above 0.6"
    return auroc


def figure3_verdict(
    in_scores: np.ndarray,
    out_scores: dict[str, np.ndarray],
    *,
    baseline: tuple[np.ndarray, dict[str, np.ndarray]] | None,
    setting: str,
    key: str = "lower",
    n_boot: int = 1000,
    seed: int = 0,
) -> Verdict:
    """Out-of-domain images score lower, for one encoder: the mean AUROC over the sets,
    reproduced when its interval lies above 0.55 and no set is inverted (interval below 0.5)."""
    value = bootstrap_mean_auroc(in_scores, out_scores, n_boot=n_boot, seed=seed)
    per_set = {
        s: bootstrap_auroc(in_scores, v, n_boot=n_boot, seed=seed) for s, v in out_scores.items()
    }
    side = sides(per_set)
    outcome = decide(value, 0.5, margin=0.05)
    if outcome == "reproduced" and side["below"]:
        outcome = "partly"
    random = (
        "not scored at this scale"
        if baseline is None
        else bootstrap_mean_auroc(*baseline, n_boot=n_boot, seed=seed)
    )
    return Verdict(
        key=key,
        claim="Figure 3",
        statement="out-of-domain images get a lower JEPA-SCORE than in-distribution ones",
        setting=setting,
        measure=f"mean AUROC over {len(per_set)} out-of-domain sets",
        value=value,
        baseline=f"chance 0.5; the same network with random weights {random}",
        outcome=outcome,
        why=(
            f"lower on {len(side['above'])} sets ({', '.join(side['above']) or 'none'}), "
            f"higher on {len(side['below'])} ({', '.join(side['below']) or 'none'})"
        ),
        chapter="natural_images",
    )


def versus_knn_verdict(
    jepa: tuple[np.ndarray, dict[str, np.ndarray]],
    knn: tuple[np.ndarray, dict[str, np.ndarray]],
    *,
    setting: str,
    key: str = "versus-knn",
    n_boot: int = 1000,
    seed: int = 0,
) -> Verdict:
    """JEPA-SCORE is as good an outlier score as k-NN on the same embeddings, as a verdict: the paired
    difference of mean AUROC, reproduced when its interval lies above -0.02."""
    gap = bootstrap_mean_auroc(*jepa, baseline=knn, n_boot=n_boot, seed=seed)
    return Verdict(
        key=key,
        claim="outlier detection",
        statement="JEPA-SCORE is as good an outlier score as k-NN distances on the same embeddings",
        setting=setting,
        measure="mean AUROC, JEPA-SCORE minus k-NN (paired)",
        value=gap,
        baseline="level: 0 (reproduced when the interval lies above -0.02)",
        outcome=decide(gap, -0.02),
        why="paired bootstrap over the same images; jepa-score-eval found k-NN ahead on CIFAR-10",
        chapter="natural_images",
    )


def slug(label: str) -> str:
    """A verdict key part from an encoder label: "EfficientNet-Lite0" -> "efficientnet-lite0"."""
    return "-".join("".join(c if c.isalnum() else " " for c in label.lower()).split())


def summary(records: list[Verdict], labels: list[str]) -> str:
    """ "MobileNetV2: reproduced (0.640 [0.550, 0.726]); ...": one verdict per encoder, for prose."""
    return "; ".join(
        f"{label}: {r.outcome} ({r.value})" for label, r in zip(labels, records, strict=True)
    )


def cost(encoder: natural_ood.PixelEncoder, x) -> dict[str, float]:
    """Seconds per image of JEPA-SCORE of pixels x (B, 3, 32, 32) by `jepa_score` (K backward
    passes) and by `natural_ood.factorised_score`, and how far the two scores differ."""
    K, passes = natural_ood.jacobian_sizes(encoder, x[:1])
    plain, plain_seconds = natural_ood.timed(lambda v: jepa_score(encoder, v), x)
    fast, fast_seconds = natural_ood.timed(lambda v: natural_ood.factorised_score(encoder, v), x)
    gap = np.abs(fast - plain)
    return {
        "passes, jepa_score": K,
        "s / image, jepa_score": plain_seconds,
        "passes, factorised": passes,
        "s / image, factorised": fast_seconds,
        "largest difference": float(gap.max()),
        "relative": float((gap / np.abs(plain)).max()),
    }
