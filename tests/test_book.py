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
