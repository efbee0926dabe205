"""The command line: `python -m jepabook score DIR --backbone NAME ...`.

Scores every file under DIR with JEPA-SCORE (higher = more likely under the encoder's learned density)
and writes one row per file. The work itself (listing, batches, journal, merge, gallery) lives in
`jepabook.folder_scoring`; this module parses arguments, reports errors and prints the summary.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from jepabook import folder_scoring as fs
from jepabook.book import resolve_device
from jepabook.gallery import write_gallery

# On CPU small batches are faster per image: the vmapped backward passes of large batches fall out
# of cache (measured: 8 -> ~120 ms/image, 32 -> ~275 ms/image for the 28 px CNN with K = 64).
CPU_BATCH, CUDA_BATCH = 8, 64
EPILOG = """\
output: one row per file under DIR (sorted by path): path (relative to DIR), score (JEPA-SCORE),
rank (1 = most likely among the scored images; empty for errors), embedding_norm, status
("ok"/"error"), error (the reason, e.g. "not an image"), backbone, embedding.

Each finished batch is appended to OUT.partial.jsonl; an interrupted run keeps all finished
batches and `--resume` scores only the files not done yet. The final OUT is written atomically
and the journal deleted.

exit codes: 0 done; 1 nothing could be scored (empty DIR: no output written; or every file
failed: the output lists why), a backbone could not be loaded, or a journal blocks the run;
2 bad arguments; 130 interrupted.
"""


def build_parser() -> argparse.ArgumentParser:
    """The `jepabook` parser with its subcommands (`score`)."""
    from jepabook.backbones import list_backbones

    parser = argparse.ArgumentParser(prog="python -m jepabook", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    score = commands.add_parser(
        "score",
        help="JEPA-SCORE of every image in a folder",
        description="JEPA-SCORE (sum of log singular values of the encoder's Jacobian) of every "
        "image under DIR, recursively.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    score.add_argument("dir", metavar="DIR", type=_existing_dir, help="folder of images")
    names = ", ".join(list_backbones())
    score.add_argument("--backbone", required=True, metavar="NAME", help=f"one of: {names}")
    score.add_argument("--weights", metavar="PATH",
                       help="local weights file or folder (default: look in the caches)")  # fmt: skip
    score.add_argument("--embedding", metavar="E",
                       help="which output to differentiate (default: the backbone's own)")  # fmt: skip
    score.add_argument(
        "--out", type=_output_path, default=Path("scores.parquet"), metavar="FILE.parquet|FILE.csv",
        help="result table, .parquet or .csv (default: scores.parquet)",
    )  # fmt: skip
    score.add_argument(
        "--batch-size", type=_positive_int, metavar="N",
        help=f"images per JEPA-SCORE call (default: {CPU_BATCH} on CPU, {CUDA_BATCH} on CUDA)",
    )  # fmt: skip
    score.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="auto (default): CUDA when present, else CPU")  # fmt: skip
    score.add_argument("--gallery", type=_gallery_path, metavar="FILE.png|FILE.html",
                       help="also draw the least and most likely images")  # fmt: skip
    score.add_argument("--n-gallery", type=_positive_int, default=8, metavar="N",
                       help="images per gallery row (default: 8)")  # fmt: skip
    score.add_argument("--resume", action="store_true", help="continue an interrupted run")
    score.add_argument("--image-size", type=_positive_int, metavar="PX",
                       help="input side in pixels (default: the backbone's)")  # fmt: skip
    score.add_argument("--quiet", action="store_true", help="no progress bar")
    score.set_defaults(run=run_score)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse argv (default sys.argv[1:]) and run the command; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse's usage errors (2) and --help (0)
        return exit_.code if isinstance(exit_.code, int) else 0
    if args.command == "score" and args.device == "cuda" and not torch.cuda.is_available():
        return _fail("--device: cuda was asked for but no CUDA device is available", code=2)
    return args.run(args)


def run_score(args: argparse.Namespace) -> int:
    """The `score` command; returns the exit code."""
    out: Path = args.out
    journals = fs.existing_journals(out)
    if journals and not args.resume:
        return _fail(
            f"--out: an unfinished run left the journal {journals[0]}; rerun with --resume to "
            "continue it, or delete the journal to start over"
        )
    files = fs.list_files(args.dir, exclude=[out, fs.journal_path(out), *journals])
    if not files:
        return _fail(f"DIR: {args.dir} holds no files; nothing to score (no output written)")
    try:
        device = resolve_device(args.device)
        backbone = _load_backbone(args, device)
    except (ValueError, FileNotFoundError) as error:  # MissingWeightsError is a FileNotFoundError
        return _fail(str(error))
    try:
        previous = _previous_results(out, journals, backbone) if args.resume else fs.combine([])
    except ValueError as error:
        return _fail(str(error))
    done = set(previous["path"])
    todo = [f for f in files if f.as_posix() not in done]
    batch_size = args.batch_size or (CPU_BATCH if device.type == "cpu" else CUDA_BATCH)
    started = time.perf_counter()
    try:
        fs.score_folder(
            todo, backbone, root=args.dir, batch_size=batch_size, device=device,
            journal=fs.journal_path(out), progress=not args.quiet,
        )  # fmt: skip
    except KeyboardInterrupt:
        return _fail(
            f"interrupted: finished batches are kept in {fs.journal_path(out)}; "
            "rerun the same command with --resume to continue", code=130,
        )  # fmt: skip
    elapsed = time.perf_counter() - started
    return _finish(args, files, previous, backbone, len(todo), elapsed)


def _finish(args, files, previous, backbone, n_new: int, elapsed: float) -> int:
    """Merge previous rows and journals, write OUT atomically, drop the journals, report."""
    out: Path = args.out
    journals = fs.existing_journals(out)
    merged = fs.combine([previous, fs.merge_journals(journals)])
    listed = {f.as_posix() for f in files}
    frame = fs.finalize(merged[merged["path"].isin(listed)])
    fs.write_table(frame, out)
    for journal in journals:
        journal.unlink()
    n_ok = int((frame["status"] == "ok").sum())
    if args.gallery is not None and n_ok:
        write_gallery(frame, args.dir, args.gallery, args.n_gallery, title=backbone.name)
    _print_summary(frame, out, args.gallery if n_ok else None, n_new, elapsed, len(previous))
    if n_ok == 0:
        return _fail(f"DIR: none of the {len(frame)} files could be scored; see {out}")
    return 0


def _load_backbone(args: argparse.Namespace, device: torch.device):
    from jepabook.backbones import load_backbone

    return load_backbone(
        args.backbone, weights=args.weights, embedding=args.embedding, device=device,
        image_size=args.image_size,
    )  # fmt: skip


def _previous_results(out: Path, journals: list[Path], backbone):
    """Rows already done (a previous OUT, then the journals); ValueError if made with another model."""
    frames = [fs.read_table(out)] if out.exists() else []
    previous = fs.combine([*frames, fs.merge_journals(journals)])
    for column, expected in (("backbone", backbone.name), ("embedding", backbone.embedding)):
        other = set(previous[column].dropna()) - {expected}
        if other:
            raise ValueError(
                f"--resume: the earlier results in {out} or its journal were made with {column} "
                f"{sorted(other)[0]!r}, not {expected!r}; use the same --{column} or delete them"
            )
    return previous


def _print_summary(frame, out: Path, gallery, n_new: int, elapsed: float, n_resumed: int) -> None:
    ok = frame[frame["status"] == "ok"].sort_values("rank")
    n_err = len(frame) - len(ok)
    print(f"scored {len(ok)} images, {n_err} errors" + (" (see the error column)" if n_err else ""))
    print(f"{n_new} files processed now in {elapsed:.1f} s ({fs.time_per_image(elapsed, n_new)})")
    if n_resumed:
        print(f"{n_resumed} files taken from the earlier run (--resume)")
    if len(ok):
        top, bottom = ok.iloc[0], ok.iloc[-1]
        print(f"most likely:  {top['path']} (score {top['score']:.2f})")
        print(f"least likely: {bottom['path']} (score {bottom['score']:.2f})")
    print(f"wrote {out}" + (f" and {gallery}" if gallery else ""))


def _fail(message: str, code: int = 1) -> int:
    print(f"jepabook score: error: {message}", file=sys.stderr)
    return code


def _existing_dir(text: str) -> Path:
    path = Path(text)
    if not path.exists():
        raise argparse.ArgumentTypeError(f"{text} does not exist")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a directory")
    return path


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _output_path(text: str) -> Path:
    path = Path(text)
    if path.suffix not in fs.OUTPUT_SUFFIXES:
        raise argparse.ArgumentTypeError(
            f"expected a file ending in .parquet or .csv, got {text!r}"
        )
    if path.suffix == ".parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise argparse.ArgumentTypeError(
                f"{text}: writing .parquet needs pyarrow; install it or write a .csv"
            ) from None
    return path


def _gallery_path(text: str) -> Path:
    path = Path(text)
    if path.suffix not in (".png", ".html"):
        raise argparse.ArgumentTypeError(f"expected a file ending in .png or .html, got {text!r}")
    return path
