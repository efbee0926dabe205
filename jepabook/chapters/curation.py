"""The curation chapter: plant problems in a training set (`jepabook.contamination`), measure which
ranking finds them (`jepabook.ranking`), prune the least likely images and measure what it does
downstream, and retrain the encoder on the pruned set; then the chapter's verdicts and figures.

Size: about 580 lines, the whole curation experiment (self-ranking, precision tables, pruning probes,
retraining, its check and verdict records, and the figures): what it reuses is already in the library, and
splitting the rest further would scatter one chapter's protocol over several files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from jepabook.chapters.images import score_sets
from jepabook.contamination import CLEAN, DIRECTIONS, PROBLEMS, Contaminated
from jepabook.datasets import ImageSet
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
from jepabook.ranking import (
    as_scores,
    bootstrap_precision,
    compare_to_random,
    prune,
    random_keep,
    random_precision,
)
from jepabook.verdicts import Verdict, decide

PROBLEM_COLOURS = {
    CLEAN: "#bbbbbb",
    "corrupted": "#d55e00",
    "off-domain": "#0072b2",
    "near-duplicate": "#009e73",
}  # figure frames, colour-blind safe


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
        values = as_scores(f"scores[{name!r}]", values)
        if len(values) != len(kind):
            raise ValueError(f"scores[{name!r}]: expected {len(kind)} scores, got {len(values)}")
        centre, spread = values[clean].mean(), values[clean].std(ddof=1)
        rows[name] = {
            problem: (values[kind == problem].mean() - centre) / max(spread, 1e-12)
            for problem in PROBLEMS
            if (kind == problem).any()
        }
    return pd.DataFrame(rows).T


# ---------------------------------------------------------------- where problems sit, precision at k


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
        values = as_scores(f"scores[{name!r}]", values)
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


def _findings(at_k: pd.DataFrame) -> dict[str, dict]:
    """Per problem, what JEPA-SCORE finds in a `precision_table` at one share of k: its row
    ("jepa"), the best score and its row ("best", "best_row"), the scores whose interval lies
    above JEPA-SCORE's ("clearly_better"), the number of other scores ("others") and whether
    JEPA-SCORE's interval lies above the random ranking's range ("above_random"). The
    "random score (control)" detector is left out."""
    out = {}
    for problem in PROBLEMS:
        rows = at_k[(at_k.problem == problem) & (at_k.detector != "random score (control)")]
        rows = rows.set_index("detector")
        best, jepa = rows.precision.idxmax(), rows.loc["JEPA-SCORE"]
        out[problem] = {
            "jepa": jepa,
            "best": best,
            "best_row": rows.loc[best],
            "clearly_better": rows.index[rows.low > jepa.high].tolist(),
            "others": len(rows) - 1,
            "above_random": bool(jepa.low > jepa.random_high),
        }
    return out


def problem_table(at_k: pd.DataFrame) -> pd.DataFrame:
    """What JEPA-SCORE finds of each problem, as a narrow table (one row per problem, "<problem>
    (k=...)"): its precision at k [interval], a random ranking's expected precision, whether it is
    above the random ranking's range, the best score with its precision, and how many of the other
    scores are clearly better (intervals not overlapping). at_k: a `precision_table` at one share of k
    (the "random score (control)" detector is left out)."""
    rows = {}
    for problem, found in _findings(at_k).items():
        jepa = found["jepa"]
        rows[f"{problem} (k={jepa.k})"] = {
            "JEPA-SCORE": format_interval(jepa.precision, jepa.low, jepa.high, 2),
            "random": f"{jepa.random:.2f}",
            "above random": "yes" if found["above_random"] else "no",
            "best score": f"{found['best']} {found['best_row'].precision:.2f}",
            "clearly better": f"{len(found['clearly_better'])} of {found['others']}",
        }
    return pd.DataFrame(rows).T.rename_axis("problem")


def retraining_comparison(retrained: Retrained, name: str = "JEPA-SCORE") -> dict:
    """The probe of the encoder retrained after pruning by ranking `name` against the encoders
    retrained after random removals, on the same test images (`ranking.compare_to_random`: the
    difference in accuracy, its half width and the verdict)."""
    correct = retrained.probe_correct
    return compare_to_random(
        correct[f"{name} pruned"], np.stack([correct[n] for n in retrained.random_names])
    )


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
