"""Run and build the book: scales, devices, papermill execution and the HTML build.

python -m jepabook.book execute --scale ci --out _build/executed   # every chapter, with papermill
python -m jepabook.book build --src _build/executed --html _build/html
python -m jepabook.book check --html _build/html                   # every chapter page, with figures
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import yaml

from jepabook import verdicts

SCALES = ("ci", "default", "full")
ROOT = Path(__file__).resolve().parent.parent
BOOK_FILES = ("_config.yml", "_toc.yml")
BOOK_FOLDERS = ("_static",)  # the book's CSS: Jupyter Book loads _static/*.css of the source folder
SCORECARD = Path("chapters/scorecard.md")  # written by build() from the verdict records


def default_scale() -> str:
    """The scale named by JEPABOOK_SCALE, or "default"."""
    return resolve_scale(os.environ.get("JEPABOOK_SCALE", "default"))


def resolve_scale(scale: str) -> str:
    """Check a scale name ("ci", "default" or "full")."""
    if scale not in SCALES:
        raise ValueError(f"scale: expected one of {SCALES}, got {scale!r}")
    return scale


def settings(scale: str, table: dict[str, dict[str, Any]]) -> SimpleNamespace:
    """A chapter's sizes for one scale: `settings("ci", {"ci": {...}, "default": {...}, "full": {...}})`."""
    missing = [s for s in SCALES if s not in table]
    if missing:
        raise ValueError(f"table: expected entries for every scale, missing {missing}")
    return SimpleNamespace(**table[resolve_scale(scale)])


def toc_entries(root: Path = ROOT) -> list[str]:
    """Every page of _toc.yml (paths relative to root, without suffix), in the order of the book."""
    toc = yaml.safe_load((root / "_toc.yml").read_text())
    entries = [toc["root"]]

    def walk(items: list[dict]) -> None:
        for item in items:
            if "file" in item:
                entries.append(item["file"])
            walk(item.get("sections", []) + item.get("chapters", []))
            for part in item.get("parts", []):
                walk(part.get("chapters", []))

    walk(toc.get("chapters", []) + [c for p in toc.get("parts", []) for c in p.get("chapters", [])])
    return entries


def chapter_files(root: Path = ROOT) -> list[Path]:
    """Notebook paths (relative to root) in the order of _toc.yml."""
    return [
        Path(f"{entry}.ipynb") for entry in toc_entries(root) if (root / f"{entry}.ipynb").exists()
    ]


def markdown_pages(root: Path = ROOT) -> list[Path]:
    """The Markdown pages of _toc.yml kept in root (relative paths), such as the glossary; the
    scorecard is not one of them: the build writes it."""
    pages = [Path(f"{entry}.md") for entry in toc_entries(root)]
    return [page for page in pages if page != SCORECARD and (root / page).exists()]


def copy_book_sources(out: Path, root: Path = ROOT) -> None:
    """Copy what the book needs besides the notebooks from root into the tree `out`: the
    configuration, the _static folder (CSS) and the Markdown pages of the table of contents."""
    out.mkdir(parents=True, exist_ok=True)
    for name in BOOK_FILES:
        shutil.copy2(root / name, out / name)
    for name in BOOK_FOLDERS:
        if (out / name).exists():
            shutil.rmtree(out / name)
        if (root / name).is_dir():
            shutil.copytree(root / name, out / name)
    for page in markdown_pages(root):
        (out / page).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / page, out / page)


def execute(
    scale: str,
    out: Path,
    *,
    root: Path = ROOT,
    parameters: dict[str, Any] | None = None,
    only: list[str] | None = None,
) -> list[Path]:
    """Execute chapters with papermill into `out`, a copy of the book tree; returns executed paths."""
    import papermill

    # The kernels inherit this environment: a non-interactive MPLBACKEND (Agg) would stop the inline
    # backend from storing figures in the executed notebooks.
    os.environ.pop("MPLBACKEND", None)
    copy_book_sources(out, root)
    executed, timings = [], {}
    for rel in chapter_files(root):
        if only and rel.stem not in only:
            continue
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        print(f"[jepabook] executing {rel} at scale={scale}", flush=True)
        papermill.execute_notebook(
            str(root / rel),
            str(target),
            parameters={"scale": scale, **(parameters or {})},
            cwd=str((root / rel).parent),
            kernel_name="python3",
            progress_bar=False,
        )
        seconds = time.perf_counter() - start
        print(f"[jepabook] {rel} done in {seconds:.1f} s", flush=True)
        timings[rel.stem] = seconds
        executed.append(target)
    print(timing_table(timings), flush=True)
    return executed


def timing_table(seconds: dict[str, float]) -> str:
    """A plain-text table of execution time per chapter, with the total."""
    width = max([len(name) for name in seconds] + [len("total")])
    lines = [f"{'chapter':<{width}}  seconds", f"{'-' * width}  -------"]
    lines += [f"{name:<{width}}  {value:7.1f}" for name, value in seconds.items()]
    lines.append(f"{'total':<{width}}  {sum(seconds.values()):7.1f}")
    return "\n".join(lines)


def write_executed(source, outputs: dict[int, list], target: Path) -> Path:
    """Write notebook `source` (a path, or the notebook as the executor read it) with the outputs of
    its code cells (numbered from 0, in order) to target.

    Lets another executor (nbval, in `make test`) supply the outputs the book is built from, so that
    each chapter runs once. Raises ValueError when a code cell has no recorded outputs.
    """
    import nbformat

    if isinstance(source, str | Path):
        notebook = nbformat.read(str(source), as_version=4)
    else:
        notebook = copy.deepcopy(source)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    missing = [i for i in range(len(code)) if i not in outputs]
    if missing:
        raise ValueError(f"outputs: no outputs recorded for code cells {missing} of {source}")
    for number, cell in enumerate(code):
        cell.outputs = [nbformat.from_dict(dict(output)) for output in outputs[number]]
        cell.execution_count = number + 1
        for output in cell.outputs:
            if output.output_type == "execute_result":
                output.execution_count = number + 1
    target.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, str(target))
    return target


def build(src: Path, html: Path) -> Path:
    """Build HTML from an executed tree with jupyter-book (execution off); returns html/index.html.

    The configuration, _static/ and Markdown pages are copied from the repository first, the
    scorecard page is written from the verdict records of the executed chapters, and the front
    page's figure and scorecard table from those (`write_front_page_parts`).
    """
    copy_book_sources(src)  # the current configuration and pages, even if the chapters ran before
    write_scorecard(src)
    write_front_page_parts(src)
    jb = Path(sys.executable).with_name("jupyter-book")
    command = [str(jb) if jb.exists() else "jupyter-book", "build", str(src), "--builder", "html"]
    subprocess.run(command + ["--quiet"], check=True)
    if html.exists():
        shutil.rmtree(html)
    shutil.copytree(src / "_build" / "html", html)
    return html / "index.html"


def write_scorecard(src: Path) -> Path:
    """Write src/chapters/scorecard.md from the verdict records of the executed chapters under src."""
    records = verdicts.collect([src / rel for rel in chapter_files(src)])
    target = src / SCORECARD
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(verdicts.scorecard(records))
    return target


FRONT_PAGE = Path("_front")
"""Where `build` writes the generated parts of the front page (index.md): its figure and the
scorecard's table."""
FRONT_FIGURE = ("gmm_density", "gmm_density-fig-heatmap")
"""The front page's figure: (chapter, the figure's name in its cell metadata)."""


def write_front_page_parts(src: Path) -> list[Path]:
    """Write src/_front/scorecard.md (the table of src/chapters/scorecard.md, which `write_scorecard`
    writes first) and src/_front/figure.png (the figure FRONT_FIGURE of the executed chapter, when
    that chapter is in src); returns the paths written."""
    target = src / FRONT_PAGE
    target.mkdir(parents=True, exist_ok=True)
    rows = [line for line in (src / SCORECARD).read_text().splitlines() if line.startswith("|")]
    (target / "scorecard.md").write_text("\n".join(rows) + "\n")
    written = [target / "scorecard.md"]
    chapter, name = FRONT_FIGURE
    notebook = src / "chapters" / f"{chapter}.ipynb"
    if notebook.exists():
        written.append(export_figure(notebook, figure_index(notebook, name), target / "figure.png"))
    return written


def check(html: Path, root: Path = ROOT) -> list[str]:
    """Problems with a built book: a chapter page missing, without a figure, or showing an error."""
    problems = []
    front = html / "index.html"
    if not front.exists():
        problems.append(f"{front} is missing")
    elif not all(tag in front.read_text(errors="replace") for tag in ("<img", "<table")):
        problems.append(f"{front} (the front page) has no figure or no scorecard table")
    scorecard = html / SCORECARD.with_suffix(".html")
    if not scorecard.exists() or "<table" not in scorecard.read_text(errors="replace"):
        problems.append(f"{scorecard} is missing or has no table")
    for rel in chapter_files(root):
        page = html / rel.with_suffix(".html")
        if not page.exists():
            problems.append(f"{page} is missing")
            continue
        text = page.read_text(errors="replace")
        if "<img" not in text:
            problems.append(f"{page} has no figure")
        if loads_network_mathjax(text):
            problems.append(f"{page} loads MathJax from the network (equations unreadable offline)")
        if "Traceback (most recent call last)" in text or 'class="output traceback' in text:
            problems.append(f"{page} shows an error")
    return problems


def loads_network_mathjax(page: str) -> bool:
    """Whether an HTML page loads a MathJax script from anywhere but the book's own _static folder.

    Pages without equations load no MathJax at all (their sections only carry a mathjax_ignore class).
    """
    sources = re.findall(
        r"<script[^>]*\bsrc=[\"']([^\"']*mathjax[^\"']*)", page, flags=re.IGNORECASE
    )
    return any("_static/mathjax/" not in source for source in sources)


def export_figure(notebook: Path, index: int, out: Path) -> Path:
    """Write the index-th PNG figure (0-based, in cell order) of an executed notebook to `out`."""
    figures = [
        output["data"]["image/png"]
        for cell in json.loads(notebook.read_text())["cells"]
        for output in cell.get("outputs", [])
        if "image/png" in output.get("data", {})
    ]
    if not 0 <= index < len(figures):
        raise ValueError(f"index: {notebook} has {len(figures)} figures, got index {index}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(base64.b64decode(figures[index]))
    return out


def figure_index(notebook: Path, name: str) -> int:
    """The index (for `export_figure`) of the first PNG figure of the cell whose metadata names the
    figure `name` (cell.metadata.mystnb.figure.name) in an executed notebook."""
    index = 0
    for cell in json.loads(notebook.read_text())["cells"]:
        named = cell.get("metadata", {}).get("mystnb", {}).get("figure", {}).get("name")
        pngs = sum("image/png" in o.get("data", {}) for o in cell.get("outputs", []))
        if named == name and pngs:
            return index
        index += pngs
    raise ValueError(f"name: {notebook} has no PNG figure named {name!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m jepabook.book", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("execute", help="execute every chapter with papermill")
    run.add_argument("--scale", default=default_scale(), choices=SCALES)
    run.add_argument("--out", type=Path, default=ROOT / "_build" / "executed")
    run.add_argument("--seed", type=int, default=None)
    run.add_argument("--device", default=None)
    run.add_argument("--only", nargs="*", help="chapter names (file stems) to run")
    html = commands.add_parser("build", help="build HTML from executed chapters")
    html.add_argument("--src", type=Path, default=ROOT / "_build" / "executed")
    html.add_argument("--html", type=Path, default=ROOT / "_build" / "html")
    verify = commands.add_parser("check", help="check a built book")
    verify.add_argument("--html", type=Path, default=ROOT / "_build" / "html")
    figure = commands.add_parser("figure", help="export one figure of an executed chapter as PNG")
    figure.add_argument("notebook", type=Path)
    figure.add_argument("index", type=int)
    figure.add_argument("out", type=Path)
    args = parser.parse_args(argv)

    if args.command == "execute":
        extra = {k: v for k, v in (("seed", args.seed), ("device", args.device)) if v is not None}
        execute(args.scale, args.out, parameters=extra, only=args.only)
    elif args.command == "build":
        index = build(args.src, args.html)
        problems = check(args.html)
        print("\n".join(problems) or f"[jepabook] built {index}")
        return 1 if problems else 0
    elif args.command == "figure":
        print(f"[jepabook] wrote {export_figure(args.notebook, args.index, args.out)}")
    else:
        problems = check(args.html)
        print("\n".join(problems) or "[jepabook] every chapter page is present, with figures")
        return 1 if problems else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
