"""The outlier-detection chapter's measurements (jepabook.detection_experiments)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from jepabook.chapters import outlier_detection as de


def fake_scores(seed: int = 0) -> dict:
    """encoder -> detector -> set -> scores: 'good' separates set A, 'coin' is noise everywhere."""
    rng = np.random.default_rng(seed)
    scores = {}
    for encoder in ("e1", "e2"):
        scores[encoder] = {
            "good": {"in-distribution": rng.normal(2, 1, 300), "A": rng.normal(0, 1, 200),
                     "control": rng.normal(2, 1, 200)},
            "coin": {"in-distribution": rng.normal(0, 1, 300), "A": rng.normal(0, 1, 200),
                     "control": rng.normal(0, 1, 200)},
        }  # fmt: skip
    return scores


def test_head_to_head_verdicts_and_tally():
    duels = de.head_to_head(fake_scores(), "good", ["coin"], control="control", n_boot=300)
    assert list(duels.set) == ["A", "A"] and (duels.verdict == "wins").all()
    assert (duels.low > 0).all()
    reverse = de.head_to_head(fake_scores(), "coin", ["good"], control="control", n_boot=300)
    assert (reverse.verdict == "loses").all()
    self_duel = de.head_to_head(fake_scores(), "coin", ["coin"], control="control", n_boot=50)
    assert (self_duel.verdict == "ties").all()
    counts = de.tally(pd.concat([duels, reverse]), "baseline")
    assert counts.loc["coin"].tolist() == [2, 0, 0] and counts.loc["good"].tolist() == [0, 0, 2]


def test_standing_and_mean_auroc_rank_detectors():
    table = pd.DataFrame(
        {
            "encoder": ["e"] * 6,
            "detector": ["a", "a", "b", "b", "c", "c"],
            "set": ["A", "control", "A", "control", "A", "control"],
            "auroc": [0.9, 0.5, 0.6, 0.5, 0.7, 0.99],
        }
    )
    means = de.mean_auroc(table, control="control")
    assert means.loc["e"].tolist() == [0.9, 0.6, 0.7]
    row = de.standing(table, "c", control="control").loc["e"]
    assert row["rank"] == 2 and row["of"] == 3 and row["best detector"] == "a"


def test_input_views_are_seeded_views_of_normalised_inputs():
    class Trained:
        meta = {"mean": 0.3, "std": 0.2}

    augment = de.input_views(Trained(), noise=0.0, degrees=0.0, min_area=1.0, flip=False)
    x = (torch.rand(3, 1, 28, 28) - 0.3) / 0.2
    same = augment(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(same, x, atol=1e-4, rtol=0)  # the identity view
    random_views = de.input_views(Trained())
    a = random_views(x, torch.Generator().manual_seed(1))
    b = random_views(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.allclose(a, x)


def test_with_intervals_formats_rows():
    table = pd.DataFrame({"auroc": [0.8123], "auroc_low": [0.75], "auroc_high": [0.86]})
    assert de.with_intervals(table).iloc[0] == "0.81 [0.75, 0.86]"


def test_folder_samples_needs_an_in_distribution_set():
    with pytest.raises(ValueError, match="folders"):
        de.folder_samples(object(), {})


def test_standing_counts_only_the_detectors_an_encoder_was_scored_with():
    table = pd.DataFrame(
        {
            "encoder": ["e", "e", "e", "f", "f"],
            "detector": ["a", "b", "multi", "a", "b"],
            "set": ["A"] * 5,
            "auroc": [0.9, 0.6, 0.7, 0.8, 0.85],
        }
    )
    standing = de.standing(table, "b")
    assert standing.loc["e", "of"] == 3 and standing.loc["f", "of"] == 2
    assert standing.loc["f", "rank"] == 1


def test_sets_by_encoder_lists_each_encoders_sets_with_or_without_a_value():
    rows = pd.DataFrame(
        {
            "encoder": ["a", "a", "b"],
            "set": ["faces", "galaxies", "MNIST"],
            "auroc": [0.1, 0.25, 0.9],
        }
    )
    plain = de.sets_by_encoder(rows, ["a", "b", "c"])
    assert plain.to_dict() == {"a": "faces, galaxies", "b": "MNIST", "c": "none"}
    valued = de.sets_by_encoder(rows[rows.encoder == "a"], ["a"], "auroc")
    assert valued.to_dict() == {"a": "faces (0.10), galaxies (0.25)"}
