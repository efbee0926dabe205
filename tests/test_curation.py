"""Injected problems (jepabook.contamination), precision at k, near-duplicate distances and pruning
(jepabook.ranking), and the curation chapter's tables and verdicts (jepabook.chapters.curation)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from jepabook import contamination, ranking
from jepabook.chapters import curation as c
from jepabook.datasets import ImageSet
from jepabook.detectors import KNN, JepaScore, Sample
from jepabook.probe import linear_probe


def blobs(n: int, seed: int, *, classes: int = 3, name: str = "blobs") -> ImageSet:
    """n random 12 x 12 images in [0, 1] with labels 0..classes-1."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 1, 12, 12, generator=generator)
    labels = torch.arange(n) % classes
    return ImageSet(name, images, labels, [f"c{i}" for i in range(classes)])


def contaminated(seed: int = 0, fraction: float = 0.05) -> contamination.Contaminated:
    return contamination.inject_problems(
        blobs(200, 1), pool=blobs(50, 2), off_domain=blobs(40, 3), fraction=fraction, seed=seed
    )


def test_injection_counts_kinds_and_labels():
    data = contaminated()
    assert len(data) == 200 + 3 * 10
    assert data.counts().to_dict() == {
        "clean": 200,
        "corrupted": 10,
        "off-domain": 10,
        "near-duplicate": 10,
    }
    assert data.images.labels.shape == (230,) and data.images.labels.max() < 3
    corrupted = data.kind == "corrupted"
    assert sorted(set(data.detail[corrupted])) == sorted(contamination.CORRUPTIONS)
    assert set(data.detail[~corrupted]) == {""}
    # the injected images are spread through the set, not appended at its end
    assert 0 < np.flatnonzero(data.kind != "clean").mean() / len(data) < 0.9
    x = data.images.images
    assert x.min() >= 0 and x.max() <= 1 and x.dtype == torch.float32


def test_near_duplicates_point_at_a_near_copy_with_the_same_label():
    data = contaminated()
    copies = np.flatnonzero(data.kind == "near-duplicate")
    originals = data.source[copies]
    assert (data.kind[originals] == "clean").all() and len(set(originals)) == len(copies)
    assert (data.source[data.kind != "near-duplicate"] == -1).all()
    x = data.images.images.flatten(1)
    for copy, original in zip(copies, originals, strict=True):
        assert data.images.labels[copy] == data.images.labels[original]
        differences = (x - x[copy]).abs().mean(1)
        differences[copy] = np.inf
        assert differences.argmin() == original and differences[original] < 0.15
    targets = data.targets("near-duplicate")
    assert targets.sum() == 2 * len(copies) and targets[originals].all()


def test_injection_is_seeded():
    a, b, other = contaminated(0), contaminated(0), contaminated(1)
    assert torch.equal(a.images.images, b.images.images)
    assert (a.kind == b.kind).all() and (a.source == b.source).all()
    assert not torch.equal(a.images.images, other.images.images)


def test_corruptions_change_images_in_their_own_way():
    x = torch.zeros(4, 1, 12, 12)
    x[:, :, 3:9, 3:9] = 0.2
    out = contamination.corrupt(x, ["noise", "blur", "occlusion", "saturation"], seed=0)
    assert (out[0] - x[0]).abs().mean() > 0.1  # heavy noise
    assert out[1].max() < 0.2 and out[1][0, 0, 0] < 0.02 and out[1][0, 2, 5] > 0  # blurred edges
    assert ((out[2] - 0.5).abs() < 1e-6).sum() == 36  # a 6 x 6 grey square
    assert torch.allclose(out[3], (4 * x[3]).clamp(0, 1))
    assert torch.equal(
        out, contamination.corrupt(x, ["noise", "blur", "occlusion", "saturation"], seed=0)
    )


def test_precision_at_k_on_hand_made_rankings():
    scores = np.array([0.1, 0.5, 0.2, 0.9, 0.3, 0.8])
    targets = np.array([True, False, True, False, False, True])
    # lowest three: 0.1, 0.2, 0.3 -> two targets of three
    assert ranking.precision_at_k(scores, targets) == pytest.approx(2 / 3)
    assert ranking.precision_at_k(scores, targets, 2) == 1.0
    # highest three: 0.9, 0.8, 0.5 -> one target
    assert ranking.precision_at_k(scores, targets, direction="highest") == pytest.approx(1 / 3)
    perfect = ranking.bootstrap_precision(-targets.astype(float), targets, n_boot=50)
    assert perfect.estimate == perfect.low == perfect.high == 1.0
    chance = ranking.random_precision(100, 10, 10)
    assert chance.estimate == 0.1 and chance.low == 0.0 and 0.2 <= chance.high <= 0.4


def test_precision_table_finds_planted_problems_and_a_random_score_does_not():
    data = contaminated()
    rng = np.random.default_rng(0)
    oracle = np.where(data.kind == "clean", 1.0, 0.0) + 0.01 * rng.normal(size=len(data))
    oracle[data.targets("near-duplicate")] = 2.0  # duplicates most likely, the others least
    table = c.precision_table(
        {"oracle": oracle, "random": rng.normal(size=len(data))}, data, n_boot=100
    )
    assert len(table) == 2 * 3 * 2
    full = table[table.share_of_k == 1.0].set_index(["detector", "problem"])
    assert full.loc[("oracle", "near-duplicate"), "precision"] == 1.0
    # corrupted and off-domain share the lowest scores: each takes about half of its k
    both = (
        full.loc[("oracle", "corrupted"), "precision"]
        + full.loc[("oracle", "off-domain"), "precision"]
    )
    assert both == pytest.approx(1.0, abs=0.11)
    random_rows = full.loc["random"]
    assert (random_rows.precision <= random_rows.random_high + 0.05).all()
    assert (table.low <= table.precision + 1e-12).all() and (
        table.precision <= table.high + 1e-12
    ).all()


def test_nearest_other_distance_finds_a_planted_duplicate():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 16))
    x[37] = x[81] + 1e-3 * rng.normal(size=16)
    distance = ranking.nearest_other_distance(x)
    assert set(np.argsort(distance)[:2]) == {37, 81}
    assert distance.min() > 0  # each row's nearest is another row, never itself
    exact = x.copy()
    exact[5] = exact[6]
    assert ranking.nearest_other_distance(exact, normalise=False)[[5, 6]].tolist() == [0.0, 0.0]


def test_neighbour_share_sees_a_planted_cluster():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 5))
    members = np.zeros(120, dtype=bool)
    members[:20] = True
    x[:20] = 10.0 + 0.1 * rng.normal(size=(20, 5))  # a tight cluster far from the rest
    assert (ranking.neighbour_share(x, members, 5, normalise=False) == 1.0).all()
    scattered = np.zeros(120, dtype=bool)
    scattered[40:60] = True
    assert ranking.neighbour_share(x, scattered, 5, normalise=False).mean() < 0.5


def test_kind_shift_is_in_clean_standard_deviations():
    kind = np.array(["clean"] * 4 + ["off-domain"] * 2)
    values = np.array([0.0, 1.0, 2.0, 3.0, -2.0, -4.0])  # clean mean 1.5, sd 1.29
    shift = c.kind_shift({"s": values}, kind)
    assert list(shift.columns) == ["off-domain"]
    assert shift.loc["s", "off-domain"] == pytest.approx(
        (-3.0 - 1.5) / np.std([0, 1, 2, 3], ddof=1)
    )


def test_self_scores_cross_fit_embedding_detectors_and_not_jepa_score():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(60, 4))
    sample = Sample(
        z,
        inputs=torch.zeros(60, 1),
        encoder=torch.nn.Identity(),
        cache={"jepa-score": np.arange(60.0)},
    )
    scores = c.self_scores([JepaScore(), KNN(3)], sample, folds=3)
    np.testing.assert_array_equal(scores["JEPA-SCORE"], np.arange(60.0))
    in_sample = KNN(3).fit(sample).score(sample)
    assert (scores["k-NN (k=3)"] < in_sample).mean() > 0.9  # no image is its own neighbour


def test_pruning_removes_the_lowest_or_random_images():
    scores = np.array([5.0, 1.0, 3.0, 0.0, 4.0, 2.0, 6.0, 7.0, 8.0, 9.0])
    assert ranking.prune(scores, 0.3).tolist() == [1, 0, 1, 0, 1, 0, 1, 1, 1, 1]
    assert ranking.prune(scores, 0.0).all()
    keep = ranking.random_keep(10, 0.3, seed=4)
    assert keep.sum() == 7 and (keep == ranking.random_keep(10, 0.3, seed=4)).all()
    shares = ranking.removed_by_class(
        np.array([0, 1, 0, 1, 2, 2]), np.array([0, 0, 0, 1, 1, 1], bool)
    )
    assert shares.tolist() == pytest.approx([2 / 3, 1 / 3, 0.0])


def test_pruning_probe_table_and_comparison_with_random():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    features = rng.normal(size=(300, 3)) + labels[:, None]
    test_labels = rng.integers(0, 2, 200)
    test = rng.normal(size=(200, 3)) + test_labels[:, None]
    table = c.pruning_probe_table(
        features, labels, test, test_labels, {"first": -np.arange(300.0)}, [0.1, 0.5],
        random_seeds=(0, 1),
    )  # fmt: skip
    assert len(table) == 1 + 2 * 3
    assert table[table.fraction == 0.5].kept.eq(150).all()
    assert table.accuracy.between(0.6, 1).all()
    assert {"correct", "accuracy"} <= set(table.columns)
    assert all(
        r.correct.shape == (200,) and r.correct.mean() == r.accuracy for r in table.itertuples()
    )
    assert table.accuracy[0] == linear_probe(features, labels, test, test_labels)


def test_compare_to_random_is_paired_on_the_test_samples():
    rng = np.random.default_rng(1)
    base = rng.random(2000) < 0.8

    def flip(outcomes, to_wrong: int, to_right: int) -> np.ndarray:
        out = outcomes.copy()
        out[rng.choice(np.flatnonzero(outcomes), to_wrong, replace=False)] = False
        out[rng.choice(np.flatnonzero(~outcomes), to_right, replace=False)] = True
        return out

    randoms = np.stack([flip(base, 20, 20) for _ in range(4)])  # the same accuracy as base
    # +0.015 in accuracy: within an unpaired test's noise (2 sqrt(0.16 / 2000) = 0.018), but the
    # same test images decide both probes, so the paired comparison sees it
    assert ranking.compare_to_random(flip(base, 0, 30), randoms)["verdict"] == "helps"
    assert ranking.compare_to_random(flip(base, 30, 0), randoms)["verdict"] == "hurts"
    same = ranking.compare_to_random(base, randoms)
    assert same["verdict"] == "no measurable effect" and same["difference"] == 0
    assert (
        0 < ranking.compare_to_random(base, randoms[:1])["half_width"] < same["half_width"] + 0.01
    )


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda: contaminated(fraction=1.5), "fraction"),
        (lambda: contaminated(fraction=0.001), "fraction"),
        (lambda: contaminated(seed=-1), "seed"),
        (
            lambda: contamination.inject_problems(
                blobs(200, 1), pool=blobs(5, 2), off_domain=blobs(40, 3)
            ),
            "pool",
        ),
        (
            lambda: contamination.inject_problems(blobs(100, 1), pool=blobs(9, 2), off_domain="x"),
            "off_domain",
        ),
        (lambda: contamination.corrupt(torch.zeros(2, 1, 4, 4), ["noise", "melt"]), "kinds"),
        (lambda: contamination.corrupt(torch.zeros(2, 1, 4, 4), ["noise"]), "kinds"),
        (lambda: contamination.near_duplicates(torch.zeros(2, 1, 4, 4), shift=2), "shift"),
        (lambda: contamination.near_duplicates(torch.zeros(2, 1, 4, 4), noise=-1), "noise"),
        (lambda: ranking.precision_at_k([1.0, 2.0], [True, False], k=3), "k"),
        (lambda: ranking.precision_at_k([1.0, 2.0], [1, 0]), "targets"),
        (lambda: ranking.precision_at_k([1.0, np.nan], [True, False]), "scores"),
        (lambda: ranking.precision_at_k([1.0, 2.0], [True, False], direction="up"), "direction"),
        (lambda: ranking.bootstrap_precision([1.0, 2.0], [False, False]), "targets"),
        (lambda: ranking.random_precision(10, 11, 2), "n_targets"),
        (lambda: ranking.nearest_other_distance(np.zeros((1, 3))), "features"),
        (lambda: ranking.neighbour_share(np.zeros((4, 3)), np.ones(4, bool), k=4), "k"),
        (lambda: ranking.neighbour_share(np.zeros((4, 3)), np.ones(3, bool)), "members"),
        (lambda: ranking.prune([1.0, 2.0], 1.0), "fraction"),
        (lambda: ranking.random_keep(0, 0.1), "n"),
        (
            lambda: ranking.compare_to_random(np.ones(3, bool), np.ones((2, 4), bool)),
            "random_correct",
        ),
        (lambda: ranking.compare_to_random(np.ones(0, bool), np.ones((2, 0), bool)), "correct"),
        (
            lambda: c.probe_correct(np.zeros((3, 2)), [0, 1], np.zeros((2, 2)), [0, 1]),
            "train_labels",
        ),
        (lambda: contaminated().targets("blurry"), "problem"),
    ],
)
def test_bad_arguments_raise_errors_naming_the_argument(call, name):
    with pytest.raises(ValueError, match=f"^{name}:"):
        call()


def hand_made_probe_table() -> pd.DataFrame:
    """A pruning probe table over 4 test images: "good" beats random at 0.1, matches it at 0.2."""
    rows = [("none", 0.0, -1, [1, 1, 0, 0])]
    rows += [("good", 0.1, -1, [1, 1, 1, 1]), ("random", 0.1, 0, [1, 0, 0, 0])]
    rows += [("random", 0.1, 1, [0, 1, 0, 0])]
    rows += [("good", 0.2, -1, [1, 1, 0, 0]), ("random", 0.2, 0, [1, 1, 0, 0])]
    rows += [("random", 0.2, 1, [1, 1, 0, 0])]
    return pd.DataFrame(
        [{"ranking": r, "fraction": f, "seed": s, "accuracy": float(np.mean(o)),
          "correct": np.array(o, bool)} for r, f, s, o in rows]
    )  # fmt: skip


def test_pruning_summary_compares_each_ranking_with_random_removal():
    probe = hand_made_probe_table()
    summary, yardstick = c.pruning_summary(probe, ["good"])
    assert c.unpruned_accuracy(probe) == 0.5
    assert summary.index.tolist() == [0.1, 0.2]
    assert summary["good"].tolist() == [1.0, 0.5]
    assert summary["random (mean)"].tolist() == [0.25, 0.5]
    assert summary["random (sd)"].tolist() == pytest.approx([0.0, 0.0])
    assert summary["good − random"].tolist() == [0.75, 0.0]
    assert summary["good: verdict"].tolist() == ["helps", "no measurable effect"]
    assert (yardstick["good"] == summary["good ± (2 s.e.)"]).all()


def test_retrain_keeps_names_each_pruning():
    rankings = {"a": np.arange(10.0), "b": -np.arange(10.0)}
    keeps = c.retrain_keeps(rankings, ["a"], 0.2, [0, 1])
    assert list(keeps) == ["none (whole clean set)", "a pruned", "random pruned (seed 0)",
                           "random pruned (seed 1)"]  # fmt: skip
    assert keeps["none (whole clean set)"].all()
    assert keeps["a pruned"].tolist() == [False, False] + [True] * 8
    assert [keep.sum() for keep in keeps.values()] == [10, 8, 8, 8]


def hand_made_at_k() -> pd.DataFrame:
    """Precision at k of three detectors for each problem (k = 10, chance 0.1 [0.0, 0.3])."""
    values = {  # detector: (precision, low, high) per problem
        "JEPA-SCORE": [(0.2, 0.0, 0.4), (0.8, 0.6, 1.0), (0.5, 0.4, 0.7)],
        "other": [(0.9, 0.7, 1.0), (0.7, 0.5, 0.9), (0.5, 0.3, 0.7)],
        "random score (control)": [(1.0, 1.0, 1.0)] * 3,  # left out of the verdicts
    }
    return pd.DataFrame(
        [{"detector": d, "problem": p, "direction": contamination.DIRECTIONS[p], "k": 10, "precision": v[0],
          "low": v[1], "high": v[2], "random": 0.1, "random_low": 0.0, "random_high": 0.3}
         for d, per_problem in values.items() for p, v in zip(contamination.PROBLEMS, per_problem, strict=True)]
    )  # fmt: skip


def test_problem_table_on_a_hand_made_table():
    table = c.problem_table(hand_made_at_k())
    assert table.index.tolist() == [f"{p} (k=10)" for p in contamination.PROBLEMS]
    corrupted, off_domain, duplicate = (table.iloc[i] for i in range(3))
    assert corrupted.to_dict() == {
        "JEPA-SCORE": "0.20 [0.00, 0.40]", "random": "0.10", "above random": "no",
        "best score": "other 0.90", "clearly better": "1 of 1",
    }  # fmt: skip
    assert off_domain["above random"] == "yes" and off_domain["clearly better"] == "0 of 1"
    assert off_domain["best score"] == "JEPA-SCORE 0.80"
    assert duplicate["above random"] == "yes"  # 0.5 [0.4, 0.7] against random's 0.0..0.3


def test_retraining_comparison_of_a_hand_made_retraining():
    names = ["none (whole clean set)", "JEPA-SCORE pruned", "random pruned (seed 0)"]
    correct = {
        names[0]: np.array([1, 1, 1, 0], bool),
        names[1]: np.array([1, 1, 0, 0], bool),
        names[2]: np.array([1, 0, 0, 0], bool),
    }
    aurocs = pd.DataFrame(
        [{"encoder": n, "column": "JEPA-SCORE AUROC · MNIST", "auroc": a,
          "auroc_low": a - 0.1, "auroc_high": a + 0.1} for n, a in zip(names, [0.7, 0.8, 0.6], strict=True)]
    )  # fmt: skip
    accuracy = {n: v.mean() for n, v in correct.items()}
    keeps = dict.fromkeys(names, np.ones(4, bool))
    retrained = c.Retrained(keeps, dict.fromkeys(names), correct, accuracy, aurocs, pd.DataFrame())
    assert retrained.random_names == ["random pruned (seed 0)"]
    verdict = c.retraining_comparison(retrained)
    assert verdict["difference"] == pytest.approx(0.25)  # 2/4 correct against 1/4
    assert verdict["half_width"] == pytest.approx(0.5)  # 2 sqrt(var([0, 1, 0, 0]) / 4), one seed
    assert verdict["verdict"] == "no measurable effect"
