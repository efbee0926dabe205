"""Source chapters: output-free, parameterised for papermill, all in the table of contents."""

from __future__ import annotations

import json
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
    assert "verdicts.show(" in "".join(code[-1]["source"]), "the last code cell shows the verdicts"
    label = f"({path.stem}-verdicts)="
    assert any(
        "".join(c["source"]).startswith(label) for c in cells if c["cell_type"] == "markdown"
    )
