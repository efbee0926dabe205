"""The package's layout: the library never reaches into the chapters' helpers."""

from __future__ import annotations

import ast
from pathlib import Path

from jepabook.book import ROOT

LIBRARY = sorted((ROOT / "jepabook").glob("*.py"))


def _imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_the_library_never_imports_the_chapters_helpers():
    offenders = {
        path.name: sorted(m for m in _imported_modules(path) if m.startswith("jepabook.chapters"))
        for path in LIBRARY
    }
    assert {name: found for name, found in offenders.items() if found} == {}


def test_every_chapter_module_is_named_after_a_notebook_or_shared():
    notebooks = {path.stem for path in (ROOT / "chapters").glob("*.ipynb")}
    modules = {p.stem for p in (ROOT / "jepabook" / "chapters").glob("*.py")} - {"__init__"}
    assert modules - notebooks == {"images"}  # the one module the image chapters share


def test_no_function_local_imports_of_jepabook_in_the_package():
    local = []
    for path in sorted((ROOT / "jepabook").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                for inner in ast.walk(node):
                    module = getattr(inner, "module", None) or ""
                    if isinstance(inner, ast.ImportFrom) and module.startswith("jepabook"):
                        local.append(f"{path.name}:{inner.lineno}")
    assert local == []
