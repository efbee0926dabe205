"""The command line: `python -m jepabook score DIR --backbone NAME ...` (or under torchrun).

Scores every file under DIR with JEPA-SCORE (higher = more likely under the encoder's learned density)
and writes one row per file. The work itself (listing, batches, journal, merge, gallery) lives in
`jepabook.folder_scoring`; this module parses arguments, reports errors and prints the summary.
Under torchrun (`jepabook.distributed`) every rank runs the same steps on its share of the files;
after each step the ranks agree on failures, so that all of them stop together.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pandas as pd
import torch

from jepabook import distributed
from jepabook import folder_scoring as fs
from jepabook.approx_score import DEFAULT_PROBES, DEFAULT_STEPS
from jepabook.backbones import Backbone, list_backbones, load_backbone
from jepabook.devices import resolve_device
from jepabook.gallery import write_gallery
from jepabook.precision import PRECISIONS

T = TypeVar("T")

# Images per batch (one journal write each): jepa_score chunks a batch itself, so on a CPU beyond
# about 32 images nothing is gained (measured, 28 px CNN with K = 64: 8 -> 21.5 ms/image,
# 32 -> 13.9, 64 -> 12.6, 256 -> 13.3) and an interrupt loses more.
CPU_BATCH, CUDA_BATCH = 32, 64
EPILOG = """\
output: one row per file under DIR (sorted by path): path (relative to DIR), score (JEPA-SCORE),
rank (1 = most likely among the scored images; empty for errors), embedding_norm, status
("ok"/"error"), error (the reason, e.g. "not an image"), backbone, embedding, method ("exact"
or "approx:probes=B,steps=S,seed=N"), score_stderr (0 for exact; for --method approx the
estimated standard error of the score from its probes, which leaves out the quadrature bias).

Each finished batch is appended to OUT.partial.jsonl; an interrupted run keeps all finished
batches and `--resume` scores only the files not done yet. The final OUT is written atomically
and the journal deleted.

Several processes: `torchrun --nproc_per_node=N -m jepabook score DIR ...` (gloo on CPU; with CUDA
one GPU per process, cuda:LOCAL_RANK, nccl). Each rank scores its share of the files into
OUT.rank<r>.partial.jsonl; rank 0 then writes OUT (the same as one process would) and deletes the
journals. If any rank fails, every rank stops with an error and the journals are kept for --resume
(with any number of processes). $JEPABOOK_DIST_TIMEOUT: seconds the ranks wait for the slowest one
(default 3600).

exit codes: 0 done; 1 nothing could be scored (empty DIR: no output written; or every file
failed: the output lists why), a backbone could not be loaded, or a journal blocks the run;
2 bad arguments; 130 interrupted.
"""


def build_parser() -> argparse.ArgumentParser:
    """The `jepabook` parser with its subcommands (`score`)."""

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
    score.add_argument("--precision", choices=PRECISIONS, default="float32",
                       help="Jacobian precision: float32 (default, exact); on CUDA tf32 or bf16, "
                       "faster, relative score error about 1e-5 and 1e-4 (README)")  # fmt: skip
    score.add_argument("--method", choices=("exact", "approx"), default="exact",
                       help="exact (default): all K Jacobian rows; approx: block Lanczos "
                       "quadrature from b*s products (score_stderr column: its error estimate)")  # fmt: skip
    score.add_argument("--probes", type=_positive_int, metavar="B",
                       help=f"--method approx: probe block width (default: {DEFAULT_PROBES})")  # fmt: skip
    score.add_argument("--steps", type=_positive_int, metavar="S",
                       help=f"--method approx: Lanczos steps (default: {DEFAULT_STEPS})")  # fmt: skip
    score.add_argument("--seed", type=int, default=0, metavar="N",
                       help="--method approx: seed of the probes (default: 0)")  # fmt: skip
    score.add_argument("--quiet", action="store_true", help="no progress bar")
    score.set_defaults(run=run_score)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse argv (default sys.argv[1:]) and run the command; returns the exit code."""
    parser = build_parser()
    try:
        with _only_on_rank_0():  # under torchrun every rank parses the same argv: one usage message
            args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse's usage errors (2) and --help (0)
        return exit_.code if isinstance(exit_.code, int) else 0
    if args.command == "score" and args.device == "cuda" and not torch.cuda.is_available():
        return _fail("--device: cuda was asked for but no CUDA device is available", code=2)
    if args.command == "score" and args.method == "exact":
        for flag in ("probes", "steps"):
            if getattr(args, flag) is not None:
                return _fail(f"--{flag}: only used with --method approx", code=2)
    if args.command == "score" and args.method == "approx" and args.precision != "float32":
        return _fail("--precision: --method approx computes in float32 only", code=2)
    if args.command == "score" and args.precision != "float32":
        if resolve_device(args.device).type != "cuda":
            return _fail(f"--precision: {args.precision} needs a CUDA device; use float32", code=2)
    return args.run(args)


class ScoreError(Exception):
    """Why the command stops: the message for stderr and the exit code (picklable, for all_gather)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message, code)
        self.message, self.code = message, code


@dataclass
class Plan:
    """What one rank does: every listed file, its own share of the files not done yet, and with what."""

    files: list[Path]
    share: list[Path]
    todo_digest: str  # of all the files not done yet: the ranks must agree on it
    previous: pd.DataFrame
    backbone: Backbone


def run_score(args: argparse.Namespace) -> int:
    """The `score` command, alone or as one rank of a torchrun launch; returns the exit code."""
    try:
        device = _join(args)
    except ValueError as error:  # the same on every rank: said once
        return _fail(str(error))
    except RuntimeError as error:  # the process group could not be formed
        return _fail(f"torchrun: {error}", all_ranks=True)
    try:
        return _run(args, device)
    except ScoreError as error:
        return _fail(error.message, error.code)
    finally:
        distributed.destroy()


def _join(args: argparse.Namespace) -> torch.device:
    """The device to score on; under torchrun, after joining the process group (cuda:LOCAL_RANK)."""
    device = resolve_device(args.device)
    launch = distributed.launch_from_env()
    return device if launch is None else distributed.init(launch, device)


def _run(args: argparse.Namespace, device: torch.device) -> int:
    """Prepare, score this rank's share, and (rank 0) write OUT; ScoreError on every rank if any fails.

    Each step ends in a collective where the ranks agree on failures, so they all stop together.
    """
    plan, error = _attempt(_prepare, args, device)
    if len(set(_agree(error, plan and plan.todo_digest))) > 1:  # e.g. files added meanwhile
        raise ScoreError(f"DIR: the ranks listed different files in {args.dir}; rerun")
    started = time.perf_counter()
    kept = "; " + _kept_hint(args.out)
    n_done, error = _attempt(_score_share, args, plan, device, hint=kept)
    n_new = sum(_agree(error, n_done, hint=kept))
    if distributed.rank() != 0:
        return 0
    return _finish(args, plan, n_new, time.perf_counter() - started)


def _attempt(step: Callable[..., T], *args, hint: str = "") -> tuple[T | None, ScoreError | None]:
    """(step(*args), None) or (None, its ScoreError); with other ranks waiting, any error + hint."""
    try:
        return step(*args), None
    except ScoreError as error:
        return None, error
    except Exception as error:
        if distributed.world_size() == 1:
            raise
        traceback.print_exc()
        return None, ScoreError(f"{type(error).__name__}: {error}" + hint)


def _agree(error: ScoreError | None, value: T, hint: str = "") -> list[T]:
    """Collective: every rank's value, by rank; raises the lowest failing rank's error on every rank.

    A rank that died instead (gloo notices the closed connection) or a timeout also raises, + hint.
    """
    try:
        gathered = distributed.all_gather((error, value))
    except RuntimeError as lost:
        raise ScoreError(f"torchrun: another rank stopped: {lost}" + hint) from None
    for rank, (failure, _) in enumerate(gathered):
        if failure is not None:
            tag = f"rank {rank}: " if rank != distributed.rank() else ""
            raise ScoreError(tag + failure.message, failure.code)
    return [v for _, v in gathered]


def _kept_hint(out: Path) -> str:
    """'finished batches are kept in <journal(s)>; rerun ... --resume ...' for this launch."""
    one = not distributed.is_initialized()
    kept = fs.journal_path(out) if one else out.with_name(f"{out.name}.rank*.partial.jsonl")
    return f"finished batches are kept in {kept}; rerun the same command with --resume to continue"


def _prepare(args: argparse.Namespace, device: torch.device) -> Plan:
    """List the files, load the backbone and (--resume) the earlier results; take this rank's share.

    Every rank lists the same sorted files and reads the same earlier results, before any rank
    writes, so the shares `todo[rank::world_size]` of the files not done yet cover each once.
    """
    out: Path = args.out
    journals = fs.existing_journals(out)
    if journals and not args.resume:
        raise ScoreError(
            f"--out: an unfinished run left the journal {journals[0]}; rerun with --resume to "
            "continue it, or delete the journal to start over"
        )
    files = fs.list_files(args.dir, exclude=[out, fs.journal_path(out), *journals])
    if not files:
        raise ScoreError(f"DIR: {args.dir} holds no files; nothing to score (no output written)")
    try:  # MissingWeightsError is a FileNotFoundError
        backbone = _load_backbone(args, device)
        method = fs.method_tag(args.method, **(_approx_options(args) or {}))
        previous = (
            _previous_results(out, journals, backbone, method) if args.resume else fs.combine([])
        )
    except (ValueError, FileNotFoundError) as error:
        raise ScoreError(str(error)) from None
    done = set(previous["path"])
    todo = [f for f in files if f.as_posix() not in done]
    share = todo[distributed.rank() :: distributed.world_size()]
    digest = hashlib.sha256("\n".join(f.as_posix() for f in todo).encode()).hexdigest()
    return Plan(files, share, digest, previous, backbone)


def _score_share(args: argparse.Namespace, plan: Plan, device: torch.device) -> int:
    """Score this rank's files into its journal (only rank 0 draws a bar); returns how many."""
    rank = distributed.rank()
    journal = fs.journal_path(args.out, rank if distributed.is_initialized() else None)
    batch_size = args.batch_size or (CPU_BATCH if device.type == "cpu" else CUDA_BATCH)
    try:
        fs.score_folder(
            plan.share, plan.backbone, root=args.dir, batch_size=batch_size, device=device,
            journal=journal, progress=not args.quiet and rank == 0, precision=args.precision,
            approx=_approx_options(args),
        )  # fmt: skip
    except KeyboardInterrupt:
        raise ScoreError(f"interrupted: {_kept_hint(args.out)}", code=130) from None
    return len(plan.share)


def _finish(args: argparse.Namespace, plan: Plan, n_new: int, elapsed: float) -> int:
    """Merge previous rows and journals, write OUT atomically, drop the journals, report (rank 0)."""
    out: Path = args.out
    journals = fs.existing_journals(out)
    merged = fs.combine([plan.previous, fs.merge_journals(journals)])
    listed = {f.as_posix() for f in plan.files}
    frame = fs.finalize(merged[merged["path"].isin(listed)])
    fs.write_table(frame, out)
    for journal in journals:
        journal.unlink()
    n_ok = int((frame["status"] == "ok").sum())
    if args.gallery is not None and n_ok:
        write_gallery(frame, args.dir, args.gallery, args.n_gallery, title=plan.backbone.name)
    n_resumed = len(plan.previous)
    _print_summary(frame, out, args.gallery if n_ok else None, n_new, elapsed, n_resumed)
    if n_ok == 0:
        return _fail(f"DIR: none of the {len(frame)} files could be scored; see {out}")
    return 0


def _approx_options(args: argparse.Namespace) -> dict | None:
    """None for --method exact, else the approximation's options {probes, steps, seed}."""
    if args.method == "exact":
        return None
    return {"probes": args.probes, "steps": args.steps, "seed": args.seed}


def _load_backbone(args: argparse.Namespace, device: torch.device):
    return load_backbone(
        args.backbone, weights=args.weights, embedding=args.embedding, device=device,
        image_size=args.image_size,
    )  # fmt: skip


def _previous_results(out: Path, journals: list[Path], backbone, method: str = "exact"):
    """Rows already done (a previous OUT, then the journals); ValueError if made with another model."""
    frames = [fs.read_table(out)] if out.exists() else []
    previous = fs.combine([*frames, fs.merge_journals(journals)])
    checks = (("backbone", backbone.name), ("embedding", backbone.embedding), ("method", method))
    for column, expected in checks:
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


def _fail(message: str, code: int = 1, *, all_ranks: bool = False) -> int:
    """Print the error (on rank 0 only, unless all_ranks: the ranks agree on failures) and return code."""
    if all_ranks or distributed.rank() == 0:
        print(f"jepabook score: error: {message}", file=sys.stderr)
    return code


@contextlib.contextmanager
def _only_on_rank_0() -> Iterator[None]:
    """Swallow stdout and stderr on the ranks other than 0 of a torchrun launch."""
    if distributed.env_rank() == 0:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


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
