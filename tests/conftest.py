"""Fixtures shared by the test modules."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from jepabook import book
from jepabook.models import build_encoder
from jepabook.train import save_checkpoint

SMALL_CNN_META = {
    "architecture": "cnn", "arch_kwargs": {"in_channels": 1, "out_dim": 16, "width": 8},
    "dataset": "fashion-mnist", "image_size": 28, "in_channels": 1, "mean": 0.286, "std": 0.353,
    "embed_dim": 16,
}  # fmt: skip


@pytest.fixture
def one_thread():
    """Torch on one thread for the test (small models: threads only add overhead), then as before."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def small_cnn_weights(tmp_path_factory) -> Path:
    """A small trained-here-style fmnist-cnn checkpoint (K=16, D=784), random weights, seed 0."""
    torch.manual_seed(0)
    encoder = build_encoder("cnn", **SMALL_CNN_META["arch_kwargs"])
    path = tmp_path_factory.mktemp("weights") / "fmnist-cnn.pt"
    return save_checkpoint(path, encoder, meta=SMALL_CNN_META)


CI_BUILD = book.ROOT / "_build" / "ci"  # the ci-scale book of `make test`: executed/ and html/


def _executed_chapters(out: Path, nbval_chapters) -> list[Path]:
    """The ci-scale chapters under `out`: nbval's outputs where it ran them (so that `make test`
    executes each chapter once), else those another process wrote to $JEPABOOK_CHAPTER_OUTPUTS
    (root conftest.py), else papermill."""
    outputs, failed = nbval_chapters
    assert not failed, f"chapters with a failing cell under nbval: {sorted(p.name for p in failed)}"
    by_name = {path.resolve().relative_to(book.ROOT): run for path, run in outputs.items()}
    if out.exists():
        shutil.rmtree(out)
    book.copy_book_sources(out)
    elsewhere = Path(os.environ.get("JEPABOOK_CHAPTER_OUTPUTS") or out / "none")
    missing = []
    for rel in book.chapter_files():
        if rel in by_name:
            continue
        if (elsewhere / rel).exists():
            shutil.copyfile(elsewhere / rel, out / rel)
        else:
            missing.append(rel.stem)
    if missing:
        book.execute("ci", out, only=missing)
    for rel, (notebook, cells) in by_name.items():
        book.write_executed(notebook, cells, out / rel)
    return [out / rel for rel in book.chapter_files()]


@pytest.fixture(scope="session")
def ci_executed(nbval_chapters) -> list[Path]:
    """The chapters executed at ci scale, in _build/ci/executed (from nbval's outputs)."""
    return _executed_chapters(CI_BUILD / "executed", nbval_chapters)


@pytest.fixture(scope="session")
def ci_book(request: pytest.FixtureRequest) -> Path:
    """The html folder of the ci-scale book, built once per session into _build/ci/html from
    `ci_executed`; $JEPABOOK_BOOK_HTML names an html folder built before instead (nothing is built)."""
    if os.environ.get("JEPABOOK_BOOK_HTML"):
        html = Path(os.environ["JEPABOOK_BOOK_HTML"]).resolve()
        assert (html / "index.html").exists(), f"JEPABOOK_BOOK_HTML: no index.html in {html}"
        return html
    request.getfixturevalue("ci_executed")
    book.build(CI_BUILD / "executed", CI_BUILD / "html")
    return CI_BUILD / "html"
