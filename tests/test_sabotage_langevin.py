"""The Langevin chapter's headline check (`jepabook.chapters.langevin.check`), run on a real full
estimator and on the same estimator broken: the real one passes, every broken one fails.

The setting is small and exact: the Knothe-Rosenblatt map of the chapter's 2-D mixture is the
encoder, so the full estimator's score is the true score to rounding, and JEPA-SCORE alone is what
the chapter's (b*) control measures. The sabotages of `jepabook.verdicts.SABOTAGES` are applied to
the score *function* that drives the sampler: "flipped" negates it, "shuffled" hands each chain the
score of another chain (`shuffled_score`, the chapter's control) and "constant" returns zeros (the
gradient of a constant estimate).
"""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from jepabook import langevin as lv
from jepabook.chapters import langevin as lc
from jepabook.data import GaussianMixture
from jepabook.flows import RosenblattMap
from jepabook.langevin import ScoreFn
from jepabook.metrics import bandwidth_ladder
from jepabook.verdicts import SABOTAGES

CHAINS, STEPS, STEP_SIZE = 200, 60, 0.06


def broken(score: ScoreFn, kind: str) -> ScoreFn:
    """The score function `score` broken one of the ways of `SABOTAGES`."""
    if kind == "flipped":
        return lambda x: -score(x)
    if kind == "shuffled":
        return lc.shuffled_score(score, seed=1)
    if kind == "constant":
        return lambda x: torch.zeros_like(x)
    raise ValueError(f"kind: expected one of {SABOTAGES}, got {kind!r}")


@pytest.fixture(scope="module")
def setting() -> dict:
    """The chapter's mixture, its exact map, the three samplers' final states under plain ULA, and
    what `sampler_table` needs to measure them."""
    mixture = GaussianMixture.random(2, 5, seed=0)
    exact = RosenblattMap(mixture)
    scores = {
        lc.TRUE: mixture.score,
        lc.JEPA: lv.estimator_score(exact, "jepa"),
        lc.FULL: lv.estimator_score(exact, "full"),
    }
    x0 = 3 * torch.randn(
        CHAINS, 2, generator=torch.Generator().manual_seed(20), dtype=torch.float64
    )
    schedules = {"ULA": lv.constant_schedule(STEP_SIZE, STEPS)}
    samples, seconds = lc.run_samplers(scores, schedules, x0, seed=30, max_drift=1.0)
    reference = mixture.sample(CHAINS, seed=40)
    bandwidths = bandwidth_ladder(mixture.sample(1000, seed=41))
    floor = lc.noise_floor(mixture, reference, bandwidths, n=CHAINS, repeats=10, seed=50)
    return dict(mixture=mixture, scores=scores, x0=x0, schedules=schedules, samples=samples,
                seconds=seconds, reference=reference, bandwidths=bandwidths, floor=floor)  # fmt: skip


def table_with(setting: dict, full: ScoreFn | None = None):
    """The sampler table of the setting, with the full estimator's sampler rerun on `full` if given."""
    samples, seconds = dict(setting["samples"]), dict(setting["seconds"])
    if full is not None:
        rerun = lc.run_samplers({lc.FULL: full}, setting["schedules"], setting["x0"],
                                seed=30, max_drift=1.0)  # fmt: skip
        samples, seconds = samples | rerun[0], seconds | rerun[1]
    return lc.sampler_table(setting["mixture"], samples, seconds, setting["reference"],
                            setting["bandwidths"], setting["floor"], true_score=lc.TRUE)  # fmt: skip


def test_check_passes_on_the_real_full_estimator(setting):
    table = table_with(setting)
    ratio = lc.check(table)
    assert ratio <= 2, table  # the exact map's full estimator is the true score: the same chains
    assert float(table.loc[(lc.JEPA, "ULA"), "MMD / max(true, floor)"]) > 2, table


@pytest.mark.parametrize("kind", SABOTAGES)
def test_check_fails_when_the_sampler_is_driven_by_a_sabotaged_score(setting, kind):
    table = table_with(setting, broken(setting["scores"][lc.FULL], kind))
    with pytest.raises(AssertionError, match="Langevin with the full estimator"):
        lc.check(table)


def test_check_names_the_failing_condition():
    """Each of the two conditions fails on its own, with a message that says which."""
    index = [(lc.FULL, "ULA"), (lc.JEPA, "ULA"), (lc.FLOOR, "-")]

    def table(full_mmd2: float, full_tv: float) -> pd.DataFrame:
        return pd.DataFrame(
            {"mmd2": [full_mmd2, 0.1, 0.001], "weight_tv": [full_tv, 0.05, 0.08],
             "MMD / max(true, floor)": [1.0, 9.0, float("nan")]},
            index=pd.MultiIndex.from_tuples(index, names=["score", "schedule"]),
        )  # fmt: skip

    assert lc.check(table(0.01, 0.1)) == 1.0
    with pytest.raises(AssertionError, match="MMD\\^2 0.03 is not below 0.2 x"):
        lc.check(table(0.03, 0.1))
    with pytest.raises(AssertionError, match="per-mode weight TV 0.200"):
        lc.check(table(0.01, 0.2))
