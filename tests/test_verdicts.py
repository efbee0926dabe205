"""Verdict records: the rule that decides them, their validation, and the scorecard built from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jepabook import verdicts
from jepabook.metrics import Interval
from jepabook.verdicts import Verdict, decide


def _record(**changes) -> Verdict:
    values = dict(
        key="auroc",
        claim="Figure 3",
        statement="out-of-domain images score lower",
        setting="Fashion-MNIST, ci scale",
        measure="AUROC",
        value=Interval(0.8, 0.7, 0.9),
        baseline="chance 0.5",
        outcome="reproduced",
        why="the interval lies above 0.5",
        chapter="out_of_domain",
    )
    return Verdict(**{**values, **changes})


@pytest.mark.parametrize(
    "interval, higher, expected",
    [
        (Interval(0.8, 0.7, 0.9), True, "reproduced"),
        (Interval(0.5, 0.4, 0.6), True, "partly"),
        (Interval(0.2, 0.1, 0.3), True, "refuted"),
        (Interval(0.2, 0.1, 0.3), False, "reproduced"),
        (Interval(0.8, 0.7, 0.9), False, "refuted"),
    ],
)
def test_decide_reads_the_interval_against_the_threshold(interval, higher, expected):
    assert decide(interval, 0.5, higher=higher) == expected


def test_a_flipped_score_turns_a_reproduced_claim_into_a_refuted_one():
    auroc = Interval(0.8, 0.7, 0.9)
    flipped = Interval(1 - auroc.estimate, 1 - auroc.high, 1 - auroc.low)
    assert decide(auroc, 0.5) == "reproduced" and decide(flipped, 0.5) == "refuted"


def test_a_real_but_small_effect_is_partly_reproduced_under_a_margin():
    assert decide(Interval(0.53, 0.51, 0.55), 0.5, margin=0.05) == "partly"


@pytest.mark.parametrize(
    "changes, match",
    [({"outcome": "maybe"}, "outcome"), ({"claim": "Figure 99"}, "claim"), ({"key": "a b"}, "key")],
)
def test_bad_records_name_the_field(changes, match):
    with pytest.raises(ValueError, match=match):
        _record(**changes)


def _notebook_with(records: list[Verdict], path: Path) -> Path:
    payload = [verdicts._as_dict(r) for r in records]
    output = {"output_type": "display_data", "metadata": {}, "data": {verdicts.MIME: payload}}
    cell = {"cell_type": "code", "source": "", "metadata": {}, "outputs": [output]}
    path.write_text(json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4}))
    return path


def test_records_round_trip_through_an_executed_notebook_into_the_scorecard(tmp_path: Path):
    records = [_record(), _record(key="lemma", claim="Lemma 1", chapter="lemma1_sphere")]
    found = verdicts.collect([_notebook_with(records, tmp_path / "a.ipynb")])
    assert found == records
    page = verdicts.scorecard(found)
    rows = [line for line in page.splitlines() if line.startswith("| ")][2:]
    assert len(rows) == len(verdicts.CLAIMS)
    assert rows[0].startswith(
        "| Lemma 1 ({ref}`lemma1 sphere <lemma1_sphere-verdicts>`) | **reproduced**"
    )
    assert "{ref}`out of domain <out_of_domain-verdicts>`" in page
    assert "| eq. (5) | not tested |" in page
    # four columns, so that the table fits the page
    assert all(row.replace("\\|", "").count("|") == 5 for row in rows)


def test_records_table_has_one_row_per_record():
    table = verdicts.records_table([_record(), _record(key="b", outcome="partly")])
    assert list(table["verdict"]) == ["reproduced", "partly"]
    assert table["deciding number"][0] == "AUROC: 0.800 [0.700, 0.900]"


def test_an_exact_number_is_a_value_too_and_survives_the_round_trip(tmp_path: Path):
    record = _record(value=3.2e-14, measure="largest |error|")
    assert verdicts.value_text(record.value) == "3.2e-14"
    assert verdicts.collect([_notebook_with([record], tmp_path / "a.ipynb")]) == [record]
    with pytest.raises(ValueError, match="value"):
        _record(value="0.5")
