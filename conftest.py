"""pytest plugin for `make test`: nbval executes each chapter once, and the ci-scale book is built from
what it executed.

nbval runs every code cell of chapters/*.ipynb as a test item; the outputs of each cell are recorded
here. Tests marked `after_chapters` run last, and the `nbval_chapters` fixture hands them what was
recorded: the `ci_book` fixture of tests/conftest.py builds the book from it, once per session,
for tests/test_book.py and tests/test_browser.py, instead of executing the chapters a second time.
A table of seconds per chapter closes the run.

`make test` runs the chapters in two processes at once and builds the book in a third: with
$JEPABOOK_CHAPTER_OUTPUTS set, every chapter that ran through without a failure is written there,
executed, when the session ends, and the book's fixtures take chapters they did not run from there.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

import pytest

_OUTPUTS = pytest.StashKey[dict]()  # chapter path -> {code cell number: outputs}
_NOTEBOOKS = pytest.StashKey[dict]()  # chapter path -> the notebook as nbval read it
_FAILED = pytest.StashKey[set]()  # chapter paths with a failed or skipped cell
_SECONDS = pytest.StashKey[dict]()  # chapter stem -> seconds
_PAGES = pytest.StashKey[dict]()  # book page -> seconds in chromium (tests/test_browser.py)


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_OUTPUTS] = defaultdict(dict)
    config.stash[_NOTEBOOKS] = {}
    config.stash[_FAILED] = set()
    config.stash[_SECONDS] = defaultdict(float)
    config.stash[_PAGES] = {}
    config.addinivalue_line("markers", "after_chapters: runs after nbval has run the chapters")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.get_closest_marker("after_chapters") is not None)


def _is_chapter_cell(item: pytest.Item) -> bool:
    return hasattr(item, "cell_num") and hasattr(item, "test_outputs")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    if not _is_chapter_cell(item) or call.when != "call":
        return
    path = Path(str(item.parent.path))
    report = outcome.get_result()
    item.config.stash[_SECONDS][path.stem] += report.duration
    if report.passed and item.test_outputs is not None:
        item.config.stash[_OUTPUTS][path][item.cell_num] = list(item.test_outputs)
        item.config.stash[_NOTEBOOKS][path] = item.parent.nb
    else:
        item.config.stash[_FAILED].add(path)


@pytest.fixture(scope="session")
def nbval_chapters(request: pytest.FixtureRequest) -> tuple[dict[Path, tuple], set[Path]]:
    """(recorded, failed): {chapter path: (the notebook as nbval read it, {code cell number:
    outputs})} for every chapter nbval ran through without a failure, and the chapters with a failed
    or skipped cell. Read when first asked for, by a test marked `after_chapters` (which runs after
    every chapter cell)."""
    return recorded_chapters(request.config)


@pytest.fixture(scope="session")
def page_seconds(request: pytest.FixtureRequest) -> dict[str, float]:
    """{book page: seconds}, filled by tests/test_browser.py and printed at the end of the run."""
    return request.config.stash[_PAGES]


def recorded_chapters(config: pytest.Config) -> tuple[dict[Path, tuple], set[Path]]:
    """(recorded, failed) as `nbval_chapters` returns them, for the session of `config`."""
    failed = config.stash[_FAILED]
    notebooks, recorded = config.stash[_NOTEBOOKS], config.stash[_OUTPUTS]
    done = {
        path: (notebooks[path], cells) for path, cells in recorded.items() if path not in failed
    }
    return done, set(failed)


def pytest_sessionfinish(session: pytest.Session) -> None:
    folder = os.environ.get("JEPABOOK_CHAPTER_OUTPUTS")
    if not folder:
        return
    from jepabook import book

    done, _ = recorded_chapters(session.config)
    for path, (notebook, cells) in done.items():
        if len(cells) == sum(cell.cell_type == "code" for cell in notebook.cells):
            book.write_executed(
                notebook, cells, Path(folder) / path.resolve().relative_to(book.ROOT)
            )


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:
    from jepabook.book import timing_table

    for title, seconds in (
        ("chapters executed by nbval", dict(config.stash[_SECONDS])),
        (
            "book pages opened in chromium (screenshots in _build/screenshots/)",
            config.stash[_PAGES],
        ),
    ):
        if seconds:
            terminalreporter.write_sep("-", title)
            terminalreporter.write_line(timing_table(seconds))
