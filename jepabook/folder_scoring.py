"""Score every image of a folder with JEPA-SCORE, journalled so that an interrupted run can resume.

Pipeline: `list_files(root)` -> `score_folder(files, backbone, root=root, journal=...)` appends each
finished batch to a JSON-lines journal -> `merge_journals(paths)` -> `finalize(frame)` adds ranks ->
`write_table(frame, out)` writes the result atomically.

The journal `<out>.partial.jsonl` holds one JSON record per file (the output columns but rank), one
batch per write, flushed and fsync'ed, so a kill loses at most the batch in flight (a torn last line is
ignored). Parallel workers (e.g. torchrun ranks, each given `files[rank::world_size]`) write their own
`journal_path(out, rank)`; `merge_journals` combines any set of journals, each path once.
"""

from __future__ import annotations

import glob
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from jepabook.approx_score import DEFAULT_PROBES, DEFAULT_STEPS
from jepabook.score import jepa_score, jepa_score_with_error

COLUMNS = [
    "path", "score", "rank", "embedding_norm", "status", "error", "backbone", "embedding",
    "method", "score_stderr",
]  # fmt: skip
RECORD_COLUMNS = [c for c in COLUMNS if c != "rank"]
# columns added later: an older table or journal without them reads as exact scores
LATER_COLUMNS = {"method": "exact", "score_stderr": 0.0}
OUTPUT_SUFFIXES = (".parquet", ".csv")


def list_files(root: Path, exclude: Iterable[Path] = ()) -> list[Path]:
    """Every file under root (recursively, symlinked folders not followed), as sorted relative paths.

    `exclude` names files to leave out (the output and its journals when they live inside root).
    """
    skip = {Path(p).resolve() for p in exclude}
    found = []
    for folder, _, names in os.walk(root):
        for name in names:
            path = Path(folder) / name
            if path.resolve() not in skip:
                found.append(path.relative_to(root))
    return sorted(found, key=lambda p: p.as_posix())


def load_image(path: Path, preprocess) -> torch.Tensor:
    """Open, fully decode and preprocess one image; (C, H, W). Raises ValueError with the reason."""
    try:
        size = path.stat().st_size
    except OSError as error:  # e.g. a dangling symlink
        raise ValueError(f"unreadable file: {error.strerror or error}") from None
    if size == 0:
        raise ValueError("empty file (0 bytes)")
    try:
        with Image.open(path) as image:
            image.load()  # decode now: truncated or corrupt data fails here, not later
            return preprocess(image)
    except UnidentifiedImageError:
        raise ValueError("not an image (PIL cannot identify the file format)") from None
    except Exception as error:  # any decoder or preprocess failure is this file's problem alone
        raise ValueError(f"unreadable image: {type(error).__name__}: {error}") from None


def method_tag(method: str = "exact", probes: int | None = None, steps: int | None = None,
               seed: int = 0) -> str:  # fmt: skip
    """The `method` column: "exact", or "approx:probes=b,steps=s,seed=n" (the defaults filled in)."""
    if method == "exact":
        return "exact"
    b, s = probes or DEFAULT_PROBES, steps or DEFAULT_STEPS
    return f"approx:probes={b},steps={s},seed={seed}"


def score_batch(
    encoder, x: torch.Tensor, precision: str = "float32", approx: dict | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """JEPA-SCORE, embedding norm ||f(x)|| and the score's standard error of a batch (B, C, H, W).

    approx: None for the exact score (error 0), or `jepa_score`'s approximation options
    (probes, steps, seed). Returns three (B,) float64 tensors.
    """
    if approx is None:
        scores = jepa_score(encoder, x, precision=precision)
        errors = torch.zeros_like(scores)
    else:
        scores, errors = jepa_score_with_error(encoder, x, method="approx", **approx)
    with torch.no_grad():
        norms = encoder(x).flatten(1).norm(dim=1).to(torch.float64)
    return scores, norms, errors


def score_folder(
    files: Sequence[Path],
    backbone,
    *,
    root: Path,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    journal: Path | None = None,
    progress: bool = True,
    precision: str = "float32",
    approx: dict | None = None,
) -> pd.DataFrame:
    """Score the given files (relative to root) in batches, appending each batch to `journal`.

    Args:
        files: paths relative to root; each gives one row, "ok" or "error" with the reason.
        backbone: a `jepabook.backbones.Backbone` (encoder, preprocess, name, embedding).
        batch_size: images per call to `jepa_score`.
        journal: JSON-lines file the records of each finished batch are appended to, or None.
        precision: `jepa_score`'s precision ("float32"; on CUDA also "tf32" or "bf16").
        approx: None (exact scores) or the approximation's options {probes, steps, seed}; the
            `score_stderr` column then holds each score's estimated standard error.

    Returns:
        one row per file with the `RECORD_COLUMNS` (no rank), in the order of `files`.
    """
    expected = tuple(getattr(backbone, "input_size", None) or ()) or None
    records = []
    with tqdm(total=len(files), unit="img", disable=not progress, desc="JEPA-SCORE") as bar:
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            batch = _score_chunk(chunk, backbone, root, device, expected, precision, approx)
            if journal is not None:
                append_journal(journal, batch)
            records.extend(batch)
            bar.update(len(chunk))
    return pd.DataFrame(records, columns=RECORD_COLUMNS)


def _score_chunk(
    chunk, backbone, root: Path, device, expected: tuple | None, precision: str, approx=None
) -> list[dict]:
    """Records for one batch of files: load each, score the readable ones together."""
    tag = method_tag("exact") if approx is None else method_tag("approx", **approx)
    meta = {"backbone": backbone.name, "embedding": backbone.embedding, "method": tag}
    records, tensors = [], []
    for rel in chunk:
        record = {"path": rel.as_posix(), "score": None, "embedding_norm": None, **meta}
        record["score_stderr"] = None
        try:
            tensor = load_image(root / rel, backbone.preprocess)
            if expected is not None and tuple(tensor.shape) != expected:
                raise ValueError(
                    f"preprocess gave shape {tuple(tensor.shape)}, expected {expected}"
                )
            tensors.append(tensor)
            record.update(status="ok", error=None)
        except ValueError as error:
            record.update(status="error", error=str(error))
        records.append(record)
    ok = [r for r in records if r["status"] == "ok"]
    if tensors:
        x = torch.stack(tensors).to(device)
        results = _score_tensors(backbone.encoder, x, precision, approx)
        for record, result in zip(ok, results, strict=True):
            record.update(result)
    return records


def _score_tensors(encoder, x: torch.Tensor, precision: str, approx=None) -> list[dict]:
    """Score, norm and standard error per sample of x (B, ...); a non-finite Jacobian (or
    approximation) becomes that sample's error."""
    try:
        scores, norms, errors = score_batch(encoder, x, precision, approx)
        if approx is not None and not torch.isfinite(scores).all():
            raise FloatingPointError("non-finite approximate score")
    except FloatingPointError:
        if len(x) == 1:
            reason = "non-finite Jacobian: JEPA-SCORE undefined for this image"
            return [
                {"score": None, "embedding_norm": None, "score_stderr": None, "status": "error",
                 "error": reason}
            ]  # fmt: skip
        # one bad sample must not cost the whole batch: redo it sample by sample
        return [_score_tensors(encoder, x[i : i + 1], precision, approx)[0] for i in range(len(x))]
    return [
        {"score": float(s), "embedding_norm": float(n), "score_stderr": float(e)}
        for s, n, e in zip(
            scores.cpu().tolist(), norms.cpu().tolist(), errors.cpu().tolist(), strict=True
        )
    ]


def journal_path(out: Path, rank: int | None = None) -> Path:
    """The journal of output `out`: `<out>.partial.jsonl`, or `<out>.rank<r>.partial.jsonl` per worker."""
    tag = "" if rank is None else f".rank{rank}"
    return out.with_name(f"{out.name}{tag}.partial.jsonl")


def existing_journals(out: Path) -> list[Path]:
    """Every journal of `out` present on disk (the single-process one and any per-rank ones)."""
    pattern = f"{glob.escape(out.name)}*.partial.jsonl"
    return sorted(out.parent.glob(pattern)) if out.parent.is_dir() else []


def append_journal(path: Path, records: list[dict]) -> None:
    """Append records (one JSON line each) in one write, then flush and fsync: a batch is durable."""
    _drop_torn_tail(path)
    text = "".join(json.dumps(r, allow_nan=False) + "\n" for r in records)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line left unfinished by a kill, so appended records start on a line of their own."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "r+b") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":  # the usual case: only the last byte is read
            return
        handle.seek(0)
        handle.truncate(handle.read().rfind(b"\n") + 1)


def read_journal(path: Path) -> Iterator[dict]:
    """The records of one journal; a torn last line (the batch in flight at a kill) is skipped."""
    lines = path.read_text(encoding="utf-8").split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):  # no newline after it: written while the process died
                return
            raise ValueError(f"journal: {path} line {number} is not a JSON record") from None


def merge_journals(paths: Iterable[Path]) -> pd.DataFrame:
    """Combine journals into one frame with every path exactly once (its latest record wins)."""
    records = [{**LATER_COLUMNS, **r} for p in paths for r in read_journal(Path(p))]
    return combine([pd.DataFrame(records, columns=RECORD_COLUMNS)])


def combine(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Concatenate result frames; for a path present several times the last row wins; sorted by path."""
    frames = [f[RECORD_COLUMNS] for f in frames if len(f)]
    if not frames:
        return pd.DataFrame(columns=RECORD_COLUMNS)
    frame = pd.concat(frames, ignore_index=True).drop_duplicates("path", keep="last")
    return frame.sort_values("path", kind="stable").reset_index(drop=True)


def finalize(frame: pd.DataFrame) -> pd.DataFrame:
    """Add `rank` (1 = highest score among the ok rows, ties by path; null for errors); all COLUMNS."""
    frame = frame.sort_values("path", kind="stable").reset_index(drop=True)
    frame["score"] = frame["score"].astype("float64")
    frame["embedding_norm"] = frame["embedding_norm"].astype("float64")
    frame["score_stderr"] = frame["score_stderr"].astype("float64")
    ok = frame["status"] == "ok"
    rank = pd.Series(pd.NA, index=frame.index, dtype="Int64")
    rank[ok] = frame.loc[ok, "score"].rank(ascending=False, method="first").astype("int64")
    frame["rank"] = rank
    frame["error"] = frame["error"].astype("object").where(frame["error"].notna(), None)
    return frame[COLUMNS]


def read_table(path: Path) -> pd.DataFrame:
    """A previous final output (.parquet or .csv) as record rows (without rank)."""
    try:
        if path.suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            text = dict.fromkeys(
                ("path", "status", "error", "backbone", "embedding", "method"), "object"
            )
            frame = pd.read_csv(
                path,
                float_precision="round_trip",
                keep_default_na=False,
                na_values=[""],
                dtype=text,
            )
    except Exception as error:  # pyarrow and the csv parser raise many kinds
        raise ValueError(f"--out: cannot read the earlier results {path}: {error}") from None
    for column, value in LATER_COLUMNS.items():
        if column not in frame.columns:
            frame[column] = value
    missing = [c for c in RECORD_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"--out: {path} is not a scores file (missing columns {missing})")
    return frame[RECORD_COLUMNS]


def write_table(frame: pd.DataFrame, out: Path) -> None:
    """Write .parquet or .csv atomically: a temporary file, fsync'ed, then renamed over `out`."""
    if out.suffix not in OUTPUT_SUFFIXES:
        raise ValueError(
            f"--out: expected a file ending in {' or '.join(OUTPUT_SUFFIXES)}, got {out}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    temporary = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            if out.suffix == ".parquet":
                frame.to_parquet(handle, index=False)
            else:
                handle.write(frame.to_csv(index=False).encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, out)
    finally:
        temporary.unlink(missing_ok=True)


def time_per_image(seconds: float, n: int) -> str:
    """'12.3 ms/image' style text (or 'n/a' when nothing was scored)."""
    if n == 0 or not math.isfinite(seconds):
        return "n/a"
    per = seconds / n
    return f"{per * 1e3:.1f} ms/image" if per < 1 else f"{per:.2f} s/image"
