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


def chapter_files(root: Path = ROOT) -> list[Path]:
    """Notebook paths (relative to root) in the order of _toc.yml."""
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
    return [Path(f"{entry}.ipynb") for entry in entries if (root / f"{entry}.ipynb").exists()]


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
    out.mkdir(parents=True, exist_ok=True)
    for name in BOOK_FILES:
        shutil.copy2(root / name, out / name)
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


SCORECARD = Path("chapters/scorecard.md")


def build(src: Path, html: Path) -> Path:
    """Build HTML from an executed tree with jupyter-book (execution off); returns html/index.html.

    The scorecard page is written first, from the verdict records of the executed chapters.
    """
    for name in BOOK_FILES:  # the current configuration, even if the chapters were executed before
        shutil.copy2(ROOT / name, src / name)
    write_scorecard(src)
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


def check(html: Path, root: Path = ROOT) -> list[str]:
    """Problems with a built book: a chapter page missing, without a figure, or showing an error."""
    problems = []
    if not (html / "index.html").exists():
        problems.append(f"{html / 'index.html'} is missing")
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
