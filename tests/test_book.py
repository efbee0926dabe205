"""The whole book at ci scale (built once per session by the `ci_book` fixture of tests/conftest.py from
nbval's outputs), papermill, the build helpers."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
import torch

from jepabook import book
from jepabook.devices import resolve_device


def test_settings_and_scales():
    table = {"ci": {"n": 1}, "default": {"n": 2}, "full": {"n": 3}}
    assert book.settings("default", table).n == 2
    with pytest.raises(ValueError, match="scale"):
        book.settings("huge", table)
    with pytest.raises(ValueError, match="missing"):
        book.settings("ci", {"ci": {}})


@pytest.mark.slow
@pytest.mark.after_chapters
def test_ci_scale_book_builds_with_every_chapter_and_figure(
    tmp_path: Path, ci_executed: list[Path], ci_book: Path
):
    assert all(path.exists() for path in ci_executed)
    assert len(ci_executed) == len(book.chapter_files())
    assert (ci_book / "index.html").exists()
    assert book.check(ci_book) == []
    png = book.export_figure(ci_executed[0], 0, tmp_path / "figure.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="index"):
        book.export_figure(ci_executed[0], 999, tmp_path / "none.png")


def test_book_sources_copy_the_css_and_the_markdown_pages(tmp_path: Path):
    root, out = tmp_path / "root", tmp_path / "out"
    (root / "_static").mkdir(parents=True)
    (root / "_static" / "book.css").write_text("pre { white-space: pre-wrap; }")
    (root / "chapters").mkdir()
    (root / "chapters" / "glossary.md").write_text("# Glossary")
    (root / "chapters" / "intro.ipynb").write_text("{}")
    (root / "_config.yml").write_text("title: t")
    toc = "root: chapters/intro\nchapters:\n  - file: chapters/glossary\n  - file: chapters/scorecard\n"
    (root / "_toc.yml").write_text(toc)
    (out / "_static").mkdir(parents=True)
    (out / "_static" / "stale.css").write_text("")
    book.copy_book_sources(out, root)
    assert (out / "_static" / "book.css").read_text() == "pre { white-space: pre-wrap; }"
    assert not (out / "_static" / "stale.css").exists()
    assert (out / "chapters" / "glossary.md").read_text() == "# Glossary"
    assert (out / "_toc.yml").read_text() == toc and (out / "_config.yml").exists()
    assert book.markdown_pages(root) == [Path("chapters/glossary.md")]
    assert book.chapter_files(root) == [Path("chapters/intro.ipynb")]


def test_papermill_injects_the_parameters_and_records_outputs(tmp_path: Path):
    (executed,) = book.execute("ci", tmp_path, only=["lemma1_sphere"], parameters={"seed": 3})
    notebook = nbformat.read(str(executed), as_version=4)
    injected = [c for c in notebook.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "seed = 3" in injected[0].source
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)
    assert any("image/png" in o.get("data", {}) for c in code for o in c.outputs)


def test_write_executed_needs_every_code_cell(tmp_path: Path):
    source = book.ROOT / "chapters" / "intro.ipynb"
    n_code = sum(c.cell_type == "code" for c in nbformat.read(str(source), as_version=4).cells)
    stream = {"output_type": "stream", "name": "stdout", "text": "ok\n"}
    written = book.write_executed(
        source, {i: [stream] for i in range(n_code)}, tmp_path / "a.ipynb"
    )
    cells = [c for c in nbformat.read(str(written), as_version=4).cells if c.cell_type == "code"]
    assert [c.execution_count for c in cells] == list(range(1, n_code + 1))
    assert all(c.outputs[0].text == "ok\n" for c in cells)
    with pytest.raises(ValueError, match="outputs"):
        book.write_executed(source, {0: [stream]}, tmp_path / "b.ipynb")


def test_timing_table_lists_every_chapter_and_the_total():
    table = book.timing_table({"intro": 1.5, "langevin": 10.0})
    assert (
        "intro" in table
        and "langevin" in table
        and table.splitlines()[-1].split() == ["total", "11.5"]
    )


def test_network_mathjax_is_flagged_and_the_bundled_copy_or_none_is_not():
    bundled = '<script defer="defer" src="../_static/mathjax/tex-chtml.js"></script>'
    network = '<script async src="https://cdn.example/mathjax@3/es5/tex-mml-chtml.js"></script>'
    no_math = '<section class="tex2jax_ignore mathjax_ignore" id="x"><p>text</p></section>'
    assert book.loads_network_mathjax(network)
    assert not book.loads_network_mathjax(bundled)
    assert not book.loads_network_mathjax(no_math)
    assert book.loads_network_mathjax(bundled + network)


def test_resolve_device_names_a_missing_cuda():
    assert resolve_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(ValueError, match="device: 'cuda' was asked for"):
            resolve_device("cuda")


def test_front_page_parts_take_the_named_figure_and_the_scorecard_rows(tmp_path: Path):
    def png() -> nbformat.NotebookNode:  # a display output whose image is the PNG signature
        return nbformat.v4.new_output("display_data", {"image/png": "iVBORw0KGgo="})

    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("a", outputs=[png()]),
        nbformat.v4.new_code_cell("b", metadata={"mystnb": {"figure": {"name": "wanted"}}}),
        nbformat.v4.new_code_cell(
            "c",
            metadata={"mystnb": {"figure": {"name": "wanted"}}},
            outputs=[png()],
        ),
    ]
    chapter, _ = book.FRONT_FIGURE
    path = tmp_path / "chapters" / f"{chapter}.ipynb"
    path.parent.mkdir(parents=True)
    nbformat.write(notebook, str(path))
    assert book.figure_index(path, "wanted") == 1  # the second PNG: the first named cell has none
    with pytest.raises(ValueError, match="no PNG figure named 'other'"):
        book.figure_index(path, "other")
    (tmp_path / book.SCORECARD).write_text(
        "# Scorecard\n\ntext\n\n| a | b |\n| - | - |\n| 1 | 2 |\n"
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(book, "FRONT_FIGURE", (chapter, "wanted"))
        table, figure = book.write_front_page_parts(tmp_path)
    assert table.read_text() == "| a | b |\n| - | - |\n| 1 | 2 |\n"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
