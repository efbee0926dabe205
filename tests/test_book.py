"""The whole book at ci scale: papermill execution of every chapter, then the HTML build."""

from __future__ import annotations

from pathlib import Path

import pytest

from jepabook import book


def test_settings_and_scales():
    table = {"ci": {"n": 1}, "default": {"n": 2}, "full": {"n": 3}}
    assert book.settings("default", table).n == 2
    with pytest.raises(ValueError, match="scale"):
        book.settings("huge", table)
    with pytest.raises(ValueError, match="missing"):
        book.settings("ci", {"ci": {}})
    assert book.resolve_device("cpu").type == "cpu"


@pytest.mark.slow
def test_ci_scale_book_builds_with_every_chapter_and_figure(tmp_path: Path):
    executed = book.execute("ci", tmp_path / "executed")
    assert len(executed) == len(book.chapter_files())
    index = book.build(tmp_path / "executed", tmp_path / "html")
    assert index.exists()
    assert book.check(tmp_path / "html") == []
    png = book.export_figure(executed[0], 0, tmp_path / "figure.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="index"):
        book.export_figure(executed[0], 999, tmp_path / "none.png")


def test_network_mathjax_is_flagged_and_the_bundled_copy_or_none_is_not():
    bundled = '<script defer="defer" src="../_static/mathjax/tex-chtml.js"></script>'
    network = '<script async src="https://cdn.example/mathjax@3/es5/tex-mml-chtml.js"></script>'
    no_math = '<section class="tex2jax_ignore mathjax_ignore" id="x"><p>text</p></section>'
    assert book.loads_network_mathjax(network)
    assert not book.loads_network_mathjax(bundled)
    assert not book.loads_network_mathjax(no_math)
    assert book.loads_network_mathjax(bundled + network)
