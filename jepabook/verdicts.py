"""Verdicts as data: each claim of the paper a chapter tests becomes one record.

A record holds the claim, the setting it was tested in, the deciding number with its interval, the
baseline it is read against, and the verdict. `decide` turns an interval and a threshold into the
verdict, so that no verdict is typed by hand; `show` ends a chapter with its records as a table and
glues each deciding number and verdict into the prose (myst-nb `glue`); `collect` reads the records
back from executed notebooks, and `scorecard` writes the book's scorecard page from them.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from jepabook.metrics import Interval

OUTCOMES = ("reproduced", "partly", "refuted", "not reproducible here")
CLAIMS = (
    "Lemma 1",
    "Lemma 2 / Theorem 1",
    "eq. (5)",
    "eq. (4)",
    "Figure 1",
    "Figure 2 (density)",
    "Figure 2 (Langevin)",
    "Figure 3",
    "Figures 4-5",
    "Figures 6-7",
    "outlier detection",
    "curation",
    "trained encoders (precondition)",
    "approximate JEPA-SCORE (book)",
)
"""The paper's claims, in the order of the scorecard; the last two are the book's own: a verdict about a
trained JEPA counts once the JEPA has demonstrably learned, and how well a matrix-free approximation
of JEPA-SCORE ranks like the exact one."""
MIME = "application/vnd.jepabook.verdicts+json"


@dataclass(frozen=True)
class Verdict:
    """One claim of the paper, as one chapter tested it.

    key: short name, unique within its chapter (glue names are "<chapter>-<key>-value" and
        "<chapter>-<key>-outcome").
    claim: which statement of the paper ("Lemma 1", "Figure 3", "outlier detection", ...).
    statement: what the claim says, in one sentence.
    setting: data, encoder and scale it was tested with.
    measure: what the deciding number is.
    value: the deciding number with its interval, or a number without one (an exact computation,
        a count), or None where no number can decide (outcome "not reproducible here").
    baseline: what the number is read against, with that number.
    outcome: one of OUTCOMES.
    why: one sentence on how the outcome follows from the numbers (or why it cannot be tested here).
    chapter: the notebook's file stem; section: the MyST label of the section to link to (by
        default "<chapter>-verdicts", the chapter's closing section).
    """

    key: str
    claim: str
    statement: str
    setting: str
    measure: str
    value: Interval | float | None
    baseline: str
    outcome: str
    why: str
    chapter: str
    section: str = ""

    def __post_init__(self):
        if self.outcome not in OUTCOMES:
            raise ValueError(f"outcome: expected one of {OUTCOMES}, got {self.outcome!r}")
        if self.value is not None and not isinstance(self.value, Interval | int | float):
            raise ValueError(f"value: expected an Interval or a number, got {self.value!r}")
        if self.claim not in CLAIMS:
            raise ValueError(f"claim: expected one of {CLAIMS}, got {self.claim!r}")
        if not self.key or not self.key.replace("-", "").replace("_", "").isalnum():
            raise ValueError(
                f"key: expected a short name of letters, digits, - and _, got {self.key!r}"
            )


def value_text(value: Interval | float | None) -> str:
    """How a deciding number is written: 'estimate [low, high]', 3 significant digits, or 'none'."""
    if value is None:
        return "none"
    return str(value) if isinstance(value, Interval) else f"{value:.3g}"


def decide(
    value: Interval | float, threshold: float, *, higher: bool = True, margin: float = 0.0
) -> str:
    """The verdict a claim "value is above threshold" (or below, with higher=False) gets.

    reproduced: the whole interval lies beyond threshold + margin in the claimed direction;
    refuted: the whole interval lies on the other side of the threshold; partly: otherwise (the
    interval straddles the threshold, or the effect is real but smaller than `margin`).
    """
    if not isinstance(value, Interval):
        value = Interval(float(value), float(value), float(value))
    low, high = (value.low, value.high) if higher else (-value.high, -value.low)
    line = threshold if higher else -threshold
    if low > line + margin:
        return "reproduced"
    if high < line:
        return "refuted"
    return "partly"


def records_table(records: list[Verdict]):
    """A DataFrame with one row per record: claim, setting, deciding number, baseline, verdict."""
    return pd.DataFrame(
        [
            {
                "claim": r.claim,
                "setting": r.setting,
                "deciding number": f"{r.measure}: {value_text(r.value)}",
                "baseline": r.baseline,
                "verdict": r.outcome,
                "why": r.why,
            }
            for r in records
        ]
    )


def show(records: list[Verdict]) -> None:
    """Display a chapter's records (a table carrying the records as JSON for `collect`) and glue
    each record's deciding number ("<chapter>-<key>-value"), verdict ("<chapter>-<key>-outcome") and
    reason ("<chapter>-<key>-why") for the prose ({glue:text}`name`)."""
    from IPython.display import display
    from myst_nb import glue

    for record in records:
        glue(f"{record.chapter}-{record.key}-value", value_text(record.value), display=False)
        glue(f"{record.chapter}-{record.key}-outcome", record.outcome, display=False)
        glue(f"{record.chapter}-{record.key}-why", record.why, display=False)
    table = records_table(records).to_html(index=False, escape=True, classes="verdicts")
    payload = [_as_dict(r) for r in records]
    display({MIME: payload, "text/html": table, "text/plain": _plain(records)}, raw=True)


def _as_dict(record: Verdict) -> dict:
    out = asdict(record)
    if isinstance(record.value, Interval):
        out["value"] = asdict(record.value)
    return out


def _plain(records: list[Verdict]) -> str:
    return "\n".join(
        f"{r.claim}: {r.outcome} ({r.measure}: {value_text(r.value)})" for r in records
    )


def collect(notebooks: list[Path]) -> list[Verdict]:
    """Every verdict record displayed by `show` in executed notebooks, in order."""
    found = []
    for path in notebooks:
        for cell in json.loads(Path(path).read_text())["cells"]:
            for output in cell.get("outputs", []):
                for item in output.get("data", {}).get(MIME, []):
                    value = item["value"]
                    value = Interval(**value) if isinstance(value, dict) else value
                    found.append(Verdict(**{**item, "value": value}))
    return found


def scorecard(records: list[Verdict], claims: tuple[str, ...] = CLAIMS) -> str:
    """The scorecard page (MyST markdown): every claim in `claims` order with each verdict the book
    reached on it, the deciding number and a link to the chapter; claims no chapter tested say so."""
    lines = [
        "# Scorecard",
        "",
        "Every claim of the paper the book tests, with the verdict each chapter reached, the number",
        "that decided it and the baseline it was read against. This page is written by `make book`",
        "from the verdict records at the end of the executed chapters; nothing in it is typed by hand.",
        "",
        "| claim (chapter) | verdict | deciding number | baseline |",
        "| --- | --- | --- | --- |",
    ]
    for claim in claims:
        matching = [r for r in records if r.claim == claim]
        if not matching:
            lines.append(f"| {claim} | not tested | | |")
        for r in matching:
            link = (
                f"{{ref}}`{r.chapter.replace('_', ' ')} <{r.section or r.chapter + '-verdicts'}>`"
            )
            number = f"{r.measure} ({r.setting}): {value_text(r.value)}"
            cells = [f"**{r.outcome}**", number, r.baseline]
            lines.append(
                f"| {_cell(r.claim)} ({link}) | " + " | ".join(_cell(c) for c in cells) + " |"
            )
    others = [r for r in records if r.claim not in claims]
    if others:
        raise ValueError(
            f"records: claims not in the scorecard's list: {[r.claim for r in others]}"
        )
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return html.escape(text).replace("|", "\\|")


SABOTAGES = ("flipped", "shuffled", "constant")


def sabotage(scores: dict, kind: str, seed: int = 0) -> dict:
    """The same scores {set: (n_s,)} broken one way, to show that a chapter's checks would catch it:
    "flipped" (sign reversed), "shuffled" (permuted across all samples of all sets), "constant"."""
    if kind not in SABOTAGES:
        raise ValueError(f"kind: expected one of {SABOTAGES}, got {kind!r}")
    names = list(scores)
    values = [np.asarray(scores[name], dtype=np.float64) for name in names]
    if kind == "flipped":
        broken = [-v for v in values]
    elif kind == "constant":
        broken = [np.zeros_like(v) for v in values]
    else:
        joined = np.random.default_rng(seed).permutation(np.concatenate(values))
        broken = np.split(joined, np.cumsum([v.size for v in values])[:-1])
    return dict(zip(names, broken, strict=True))
