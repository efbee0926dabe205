"""`torchrun --nproc_per_node=2 -m jepabook score ...`: the one-process table, resume, failures.

Real torchrun (`python -m torch.distributed.run --standalone`), 2 CPU processes, gloo on loopback.
Each launch costs ~10 s of process start-up (torch imported by the agent and by both workers).

Batch composition: with this CNN, JEPA-SCORE of a sample does not depend on the other samples of its
batch for batches of 2 or more (measured: bit-identical); a batch of 1 takes another kernel path and
differs by ~2e-9 relative. The folder is laid out so that no batch, in one process or on either
rank, holds a single readable image; the scores must then agree to 1e-12 (they are bit-identical
here). The embedding norm comes from a plain float32 forward pass, which differs in the last bit
between batch sizes, hence its 1e-6.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from jepabook import cli, distributed, folder_scoring

ROOT = Path(__file__).resolve().parent.parent
# 12 images then the corrupt file, in sorted order; batches of 4 -> one process: 4, 4, 4, [corrupt];
# rank 0 gets files 0, 2, ..., 12 -> 4, 3 (2 readable); rank 1 gets 1, 3, ..., 11 -> 4, 2.
N_IMAGES, CORRUPT, BATCH = 12, "zz_corrupt.png", "4"
PYTHONPATH = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": PYTHONPATH}
if sys.platform == "linux":
    ENV["GLOO_SOCKET_IFNAME"] = "lo"
LAUNCH_LIMIT = 120  # seconds: a launch that takes longer is hanging
# Rank 1 dies, as if killed, in the middle of its second batch.
KILL_RANK_1 = """\
import os, sys
from jepabook import cli, folder_scoring

if os.environ["RANK"] == "1":
    real, calls = folder_scoring.score_batch, []

    def dying(encoder, x, *options):
        calls.append(len(x))
        if len(calls) == 2:
            os._exit(9)
        return real(encoder, x, *options)

    folder_scoring.score_batch = dying
sys.exit(cli.main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory, small_cnn_weights) -> dict:
    """Weights, a folder of 12 random PNGs and a corrupt file, and the one-process result table."""
    base = tmp_path_factory.mktemp("distributed")
    weights = small_cnn_weights
    rng = np.random.default_rng(0)
    images = base / "images"
    images.mkdir()
    for i in range(N_IMAGES):
        pixels = rng.integers(0, 256, (28, 28), dtype=np.uint8)
        Image.fromarray(pixels, "L").save(images / f"gray_{i:02d}.png")
    (images / CORRUPT).write_bytes(rng.bytes(300))
    reference = base / "single.parquet"
    result = run([sys.executable, "-m", "jepabook"], images, weights, reference)
    assert result.returncode == 0, result.stderr
    return {"images": images, "weights": weights, "reference": pd.read_parquet(reference)}


def run(launcher: list[str], images: Path, weights: Path, out: Path, *extra: str):
    """Run `<launcher> score images ...` on CPU in a subprocess; its CompletedProcess, with .seconds.

    --device cpu: on a machine with one GPU, auto would give both ranks CUDA and stop (1 GPU, 2 ranks).
    """
    argv = ["score", str(images), "--backbone", "fmnist-cnn", "--weights", str(weights),
            "--out", str(out), "--batch-size", BATCH, "--device", "cpu", "--quiet", *extra]  # fmt: skip
    started = time.monotonic()
    result = subprocess.run(
        [*launcher, *argv], env=ENV, cwd=ROOT, capture_output=True, text=True,
        timeout=LAUNCH_LIMIT,
    )  # fmt: skip
    result.seconds = time.monotonic() - started
    return result


def torchrun(*script: str) -> list[str]:
    """The torchrun command line for 2 local processes running `script` (e.g. -m jepabook)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            *script]  # fmt: skip


def assert_same_table(got: pd.DataFrame, expected: pd.DataFrame, rtol: float) -> None:
    assert got["path"].is_unique
    assert got["path"].tolist() == expected["path"].tolist()
    np.testing.assert_allclose(got["score"], expected["score"], rtol=rtol, atol=0)
    np.testing.assert_allclose(got["embedding_norm"], expected["embedding_norm"], rtol=1e-6)
    for column in ("rank", "status", "error", "backbone", "embedding"):
        assert got[column].tolist() == expected[column].tolist(), column


def leftovers(folder: Path) -> list[Path]:
    return [*folder.glob("*.partial.jsonl"), *folder.glob(".*.tmp")]


def test_two_ranks_write_the_one_process_table(setup, tmp_path):
    out = tmp_path / "scores.parquet"
    result = run(torchrun("-m", "jepabook"), setup["images"], setup["weights"], out)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("scored 12 images, 1 errors") == 1  # rank 0 alone reports
    assert f"{N_IMAGES + 1} files processed now" in result.stdout
    got, expected = pd.read_parquet(out), setup["reference"]
    assert_same_table(got, expected, rtol=1e-12)
    corrupt = got.set_index("path").loc[CORRUPT]
    assert corrupt["status"] == "error" and "not an image" in corrupt["error"]
    assert not leftovers(tmp_path)


def test_a_killed_rank_stops_the_launch_and_resume_finishes_it(setup, tmp_path):
    out = tmp_path / "scores.parquet"
    script = tmp_path / "kill_rank_1.py"
    script.write_text(KILL_RANK_1)
    killed = run(torchrun(str(script)), setup["images"], setup["weights"], out)
    assert killed.returncode != 0 and killed.seconds < LAUNCH_LIMIT
    assert not out.exists()
    rank1 = [r["path"] for r in folder_scoring.read_journal(folder_scoring.journal_path(out, 1))]
    assert rank1 == [f"gray_{i:02d}.png" for i in (1, 3, 5, 7)]  # its first batch, fsync'ed

    resumed = run(torchrun("-m", "jepabook"), setup["images"], setup["weights"], out, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert not leftovers(tmp_path)
    taken = int(re.search(r"(\d+) files taken from the earlier run", resumed.stdout)[1])
    assert 4 <= taken < N_IMAGES + 1  # at least rank 1's first batch, never everything
    assert f"{N_IMAGES + 1 - taken} files processed now" in resumed.stdout
    # what rank 0 finished before the kill varies, so a resumed batch may hold a single image
    assert_same_table(pd.read_parquet(out), setup["reference"], rtol=1e-6)


def test_unknown_backbone_fails_on_every_rank_with_one_message(setup, tmp_path):
    out = tmp_path / "scores.parquet"
    command = torchrun("-m", "jepabook")
    result = run(command, setup["images"], setup["weights"], out, "--backbone", "no-such-model")
    assert result.returncode != 0 and result.seconds < LAUNCH_LIMIT
    message = "jepabook score: error: name: expected one of"
    assert result.stderr.count(message) == 1 and "'no-such-model'" in result.stderr
    assert not out.exists() and not leftovers(tmp_path)


def test_a_journal_of_any_rank_blocks_a_run_without_resume(setup, tmp_path, capsys):
    out = tmp_path / "scores.parquet"
    folder_scoring.journal_path(out, 3).write_text("")
    argv = ["score", str(setup["images"]), "--backbone", "fmnist-cnn", "--weights",
            str(setup["weights"]), "--out", str(out), "--quiet"]  # fmt: skip
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "scores.parquet.rank3.partial.jsonl" in err and "--resume" in err


def test_the_lowest_failing_rank_is_reported_on_every_rank(monkeypatch):
    gathered = [(None, 5), (cli.ScoreError("weights: gone", 1), None), (cli.ScoreError("x", 2), 0)]
    monkeypatch.setattr(distributed, "all_gather", lambda obj: gathered)
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    with pytest.raises(cli.ScoreError) as raised:
        cli._agree(None, 5)
    assert (raised.value.message, raised.value.code) == ("rank 1: weights: gone", 1)
    monkeypatch.setattr(distributed, "all_gather", lambda obj: [(None, 5), (None, 7)])
    assert cli._agree(None, 5) == [5, 7]


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        (
            {"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"},
            distributed.Launch(3, 4, 1, 2),
        ),
        ({"WORLD_SIZE": "1", "RANK": "0", "LOCAL_RANK": "0"}, distributed.Launch(0, 1, 0, 1)),
        ({"WORLD_SIZE": "2"}, "WORLD_SIZE is set but not RANK, LOCAL_RANK"),
        ({"WORLD_SIZE": "2", "RANK": "x", "LOCAL_RANK": "0"}, "expected integers"),
        ({"WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0"}, "out of range"),
    ],
)
def test_launch_from_env(environ, expected):
    if isinstance(expected, str):
        with pytest.raises(ValueError, match=expected):
            distributed.launch_from_env(environ)
    else:
        assert distributed.launch_from_env(environ) == expected
