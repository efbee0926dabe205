"""The whole book at ci scale: papermill execution of every chapter, then the HTML build."""

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


def _executed_chapters(out: Path, nbval_chapters) -> list[Path]:
    """The ci-scale chapters under `out`: nbval's outputs where it ran them (so that `make test`
    executes each chapter once), papermill for the chapters nbval did not run."""
    outputs, failed = nbval_chapters
    assert not failed, f"chapters with a failing cell under nbval: {sorted(p.name for p in failed)}"
    by_name = {path.resolve().relative_to(book.ROOT): run for path, run in outputs.items()}
    missing = [rel.stem for rel in book.chapter_files() if rel not in by_name]
    if missing:
        book.execute("ci", out, only=missing)
    out.mkdir(parents=True, exist_ok=True)
    for name in book.BOOK_FILES:
        (out / name).write_bytes((book.ROOT / name).read_bytes())
    for rel, (notebook, cells) in by_name.items():
        book.write_executed(notebook, cells, out / rel)
    return [out / rel for rel in book.chapter_files()]


@pytest.mark.slow
@pytest.mark.after_chapters
def test_ci_scale_book_builds_with_every_chapter_and_figure(tmp_path: Path, nbval_chapters):
    executed = _executed_chapters(tmp_path / "executed", nbval_chapters)
    assert all(path.exists() for path in executed)
    assert len(executed) == len(book.chapter_files())
    index = book.build(tmp_path / "executed", tmp_path / "html")
    assert index.exists()
    assert book.check(tmp_path / "html") == []
    png = book.export_figure(executed[0], 0, tmp_path / "figure.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="index"):
        book.export_figure(executed[0], 999, tmp_path / "none.png")


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
