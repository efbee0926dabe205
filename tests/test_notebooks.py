"""Source chapters: output-free, parameterised for papermill, all in the table of contents."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from jepabook.book import ROOT, chapter_files

CHAPTERS = sorted((ROOT / "chapters").glob("*.ipynb"))


def test_there_are_chapters_and_all_are_in_the_toc():
    assert CHAPTERS, "no chapters found"
    listed = {ROOT / p for p in chapter_files()}
    assert set(CHAPTERS) == listed


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_is_output_free(path: Path):
    cells = json.loads(path.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert not [c for c in code if c.get("outputs")], "stored outputs"
    assert all(c.get("execution_count") is None for c in code), "stored execution counts"


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_has_one_papermill_parameters_cell(path: Path):
    cells = json.loads(path.read_text())["cells"]
    tagged = [c for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    source = "".join(tagged[0]["source"])
    assert 'scale = os.environ.get("JEPABOOK_SCALE", "default")' in source
    assert "seed = " in source and "device = " in source
    assert cells[0]["cell_type"] == "markdown" and "".join(cells[0]["source"]).startswith("# ")


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_plumbing_cells_are_collapsed_and_the_chapter_ends_with_its_verdicts(path: Path):
    cells = json.loads(path.read_text())["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    first = next(i for i, c in enumerate(code) if "parameters" in c["metadata"].get("tags", []))
    for cell in code[first : first + 2]:  # the parameters cell and the setup cell after it
        assert "hide-input" in cell["metadata"]["tags"]
    verdicts_at = _section(cells, f"({path.stem}-verdicts)=")
    exercises_at = _section(cells, f"({path.stem}-exercises)=")
    assert verdicts_at is not None, "no verdicts section"
    before_exercises = [c for c in cells[:exercises_at] if c["cell_type"] == "code"]
    assert "verdicts.show(" in "".join(before_exercises[-1]["source"]), (
        "the last code cell before the exercises shows the verdicts"
    )


def _section(cells: list[dict], label: str) -> int | None:
    """Index of the markdown cell that opens with the MyST target `label`, or None."""
    for i, cell in enumerate(cells):
        if cell["cell_type"] == "markdown" and "".join(cell["source"]).startswith(label):
            return i
    return None


def _markdown(cells: list[dict]) -> str:
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "markdown")


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_says_what_it_teaches_and_assumes(path: Path):
    cells = json.loads(path.read_text())["cells"]
    opening = _markdown(cells[:3])
    assert "**You will learn**" in opening and "**It assumes**" in opening


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_ends_with_exercises_after_its_verdicts(path: Path):
    """2-4 exercises (sphinx-exercise) after the verdicts, each with a collapsed solution; at least
    one solution is a code cell, executed like the rest, that asserts the stated answer."""
    cells = json.loads(path.read_text())["cells"]
    start = _section(cells, f"({path.stem}-exercises)=")
    assert start is not None and start > _section(cells, f"({path.stem}-verdicts)="), (
        "an exercises section after the verdicts"
    )
    text = _markdown(cells[start:])
    labels = re.findall(r"\{exercise\}\s*\n:label: (\S+)", text)
    assert 2 <= len(labels) <= 4, labels
    assert all(label.startswith(f"{path.stem}-ex") for label in labels), labels
    for label in labels:
        assert re.search(
            r"\{solution(-start)?\} " + re.escape(label) + r"\s*\n:class: dropdown", text
        ), f"{label}: no collapsed solution"
    runnable = [c for c in cells[start:] if c["cell_type"] == "code"]
    assert any("assert " in "".join(c["source"]) for c in runnable), "no runnable solution"


STATEMENTS = {  # label -> chapter that states it (sphinx-proof directives)
    "lemma-1": "lemma1_sphere",
    "lemma-2": "change_of_variables",
    "theorem-1": "change_of_variables",
    "def-jepa-score": "intro",
    "def-sigreg": "intro",
    "def-full-estimator": "intro",
}


def test_statements_are_numbered_directives_stated_once_and_cited():
    defined: dict[str, list[str]] = {}
    for path in CHAPTERS:
        text = _markdown(json.loads(path.read_text())["cells"])
        for label in re.findall(r"\{prf:\w+\}[^\n]*\n(?::[^\n]*\n)*?:label: (\S+)", text):
            defined.setdefault(label, []).append(path.stem)
        if path.stem != "intro":
            assert "{prf:ref}" in text, f"{path.stem} cites none of the statements"
    assert {label: defined.get(label) for label in STATEMENTS} == {
        label: [stem] for label, stem in STATEMENTS.items()
    }


GLOSSARY_TERMS = [
    "JEPA",
    "SIGReg",
    "JEPA-SCORE",
    "full estimator",
    "AUROC",
    "FPR95",
    "linear probe",
]


def test_glossary_defines_the_terms_and_every_chapter_links_to_it():
    glossary = (ROOT / "chapters" / "glossary.md").read_text()
    assert "```{glossary}" in glossary
    entries = re.findall(r"^(\S[^\n]*)\n  \S", glossary.split("```{glossary}", 1)[1], re.M)
    assert set(GLOSSARY_TERMS) <= set(entries), entries
    for path in CHAPTERS:
        assert "{term}" in _markdown(json.loads(path.read_text())["cells"]), path.stem
