"""`python -m jepabook score DIR ...`: outputs, bad files, bad arguments, interruption and resume, galleries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from jepabook import folder_scoring, jepa_score
from jepabook.cli import main

ROOT = Path(__file__).resolve().parent.parent
N_GRAY, RGB_SIZES = 12, ((40, 30), (64, 64), (17, 23))


@pytest.fixture(scope="module")
def weights(small_cnn_weights) -> Path:
    """A small trained-here-style checkpoint (K=16, D=784)."""
    return small_cnn_weights


@pytest.fixture
def images(tmp_path) -> Path:
    """12 random 28x28 grayscale PNGs, and 3 RGB ones of other sizes in a subfolder."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    (folder / "colour").mkdir(parents=True)
    for i in range(N_GRAY):
        pixels = rng.integers(0, 256, (28, 28), dtype=np.uint8)
        Image.fromarray(pixels, "L").save(folder / f"gray_{i:02d}.png")
    for i, (w, h) in enumerate(RGB_SIZES):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels, "RGB").save(folder / "colour" / f"rgb_{i}.png")
    return folder


def score(folder: Path, out: Path, weights: Path, *extra: str) -> int:
    argv = [str(folder), "--backbone", "fmnist-cnn", "--weights", str(weights), "--out", str(out)]
    return main(["score", *argv, "--batch-size", "4", "--quiet", *extra])


def all_files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def test_scores_match_jepa_score_and_ranks_follow_scores(images, weights, tmp_path, capsys):
    out = tmp_path / "scores.parquet"
    assert score(images, out, weights) == 0
    frame = pd.read_parquet(out)
    assert list(frame.columns) == folder_scoring.COLUMNS
    assert frame["path"].tolist() == all_files(images)
    assert (frame["status"] == "ok").all() and frame["error"].isna().all()
    assert sorted(frame["rank"]) == list(range(1, len(frame) + 1))
    assert frame.sort_values("rank")["score"].is_monotonic_decreasing

    from jepabook.backbones import load_backbone

    backbone = load_backbone("fmnist-cnn", weights=weights, device="cpu")
    x = torch.stack(
        [folder_scoring.load_image(images / p, backbone.preprocess) for p in frame.path]
    )
    np.testing.assert_allclose(frame["score"], jepa_score(backbone.encoder, x).numpy(), rtol=1e-6)
    with torch.no_grad():
        norms = backbone.encoder(x).norm(dim=1).numpy()
    np.testing.assert_allclose(frame["embedding_norm"], norms, rtol=1e-5)
    assert (frame["backbone"] == backbone.name).all()
    assert (frame["embedding"] == backbone.embedding).all()
    assert f"scored {len(frame)} images, 0 errors" in capsys.readouterr().out
    assert not list(tmp_path.glob("*.partial.jsonl"))


def test_csv_output_inside_dir_equals_parquet(images, weights, tmp_path):
    parquet, csv = tmp_path / "scores.parquet", images / "scores.csv"
    assert score(images, parquet, weights) == 0
    for _ in range(2):  # the second run must not list the first run's output as an input file
        assert score(images, csv, weights) == 0
    expected, got = pd.read_parquet(parquet), pd.read_csv(csv)
    assert got["path"].tolist() == expected["path"].tolist()
    np.testing.assert_allclose(got["score"], expected["score"], rtol=1e-12)
    assert got["rank"].tolist() == expected["rank"].tolist()


def test_bad_files_are_reported_and_the_rest_scored(images, weights, tmp_path):
    png = (images / "gray_00.png").read_bytes()
    (images / "corrupt.png").write_bytes(np.random.default_rng(1).bytes(500))
    (images / "empty.png").write_bytes(b"")
    (images / "truncated.png").write_bytes(png[: len(png) // 2])
    (images / "notes.txt").write_text("not a picture\n")
    out = tmp_path / "scores.parquet"
    assert score(images, out, weights) == 0
    frame = pd.read_parquet(out).set_index("path")
    reasons = {
        "corrupt.png": "not an image", "empty.png": "empty file", "truncated.png": "truncated",
        "notes.txt": "not an image",
    }  # fmt: skip
    for name, reason in reasons.items():
        row = frame.loc[name]
        assert row["status"] == "error" and reason in row["error"], (name, row["error"])
        assert pd.isna(row["rank"]) and pd.isna(row["score"])
    ok = frame[frame["status"] == "ok"]
    assert len(ok) == N_GRAY + len(RGB_SIZES) and ok["score"].notna().all()
    assert sorted(ok["rank"]) == list(range(1, len(ok) + 1))


class NaNOnWhite(torch.nn.Module):
    """(B, 1, 28, 28) -> (B, 4): the first 4 pixels, NaN for an all-white image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        white = x.flatten(1).mean(1, keepdim=True) > 0.99
        return x.flatten(1)[:, :4] * torch.where(white, float("nan"), 1.0)


def test_score_folder_turns_a_non_finite_jacobian_into_that_files_error(tmp_path):
    for name, value in (("a.png", 0), ("b.png", 255), ("c.png", 128)):
        Image.new("L", (28, 28), value).save(tmp_path / name)
    backbone = SimpleNamespace(
        name="toy", embedding="output", encoder=NaNOnWhite(), input_size=(1, 28, 28),
        preprocess=lambda im: torch.from_numpy(np.asarray(im, dtype=np.float32) / 255)[None],
    )  # fmt: skip
    files = folder_scoring.list_files(tmp_path)
    frame = folder_scoring.score_folder(
        files, backbone, root=tmp_path, batch_size=3, progress=False
    )
    assert frame["status"].tolist() == ["ok", "error", "ok"]
    assert "non-finite Jacobian" in frame["error"][1]
    np.testing.assert_allclose(frame["score"][[0, 2]], 0.0, atol=1e-12)  # J = [I_4 0]


def test_empty_folder_is_an_error_and_writes_nothing(tmp_path, weights, capsys):
    (tmp_path / "empty").mkdir()
    out = tmp_path / "scores.parquet"
    assert score(tmp_path / "empty", out, weights) == 1
    assert "holds no files" in capsys.readouterr().err
    assert not out.exists()


def test_a_folder_of_only_bad_files_lists_them_and_fails(tmp_path, weights, capsys):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "notes.txt").write_text("hello")
    out = tmp_path / "scores.csv"
    assert score(tmp_path / "bad", out, weights) == 1
    assert "none of the 1 files could be scored" in capsys.readouterr().err
    assert pd.read_csv(out)["status"].tolist() == ["error"]


@pytest.mark.parametrize(
    ("argv", "code", "message"),
    [
        (["score", "{tmp}/missing", "--backbone", "x"], 2, "DIR: {tmp}/missing does not exist"),
        (
            ["score", "{tmp}/file.txt", "--backbone", "x"],
            2,
            "DIR: {tmp}/file.txt is not a directory",
        ),
        (
            ["score", "{tmp}", "--backbone", "x", "--out", "s.txt"],
            2,
            "--out: expected a file ending",
        ),
        (["score", "{tmp}", "--backbone", "x", "--batch-size", "0"], 2, "--batch-size: expected a"),
        (["score", "{tmp}", "--backbone", "x", "--gallery", "g.jpg"], 2, "--gallery: expected"),
        (["score", "{tmp}"], 2, "--backbone"),
        (["score", "{tmp}", "--backbone", "x", "--precision", "fp8"], 2, "--precision"),
        (
            ["score", "{tmp}", "--backbone", "x", "--precision", "bf16", "--device", "cpu"],
            2,
            "--precision: bf16 needs a CUDA device",
        ),
        (["score", "{tmp}", "--backbone", "no-such-model"], 1, "no-such-model"),
        (
            ["score", "{tmp}", "--backbone", "fmnist-cnn", "--weights", "{tmp}/none.pt"],
            1,
            "none.pt",
        ),
    ],
)
def test_bad_arguments_name_the_argument(tmp_path, capsys, argv, code, message):
    (tmp_path / "file.txt").write_text("x")
    Image.new("L", (28, 28)).save(tmp_path / "a.png")
    argv = [a.format(tmp=tmp_path) for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "o.csv")]
    assert main(argv) == code
    assert message.format(tmp=tmp_path) in capsys.readouterr().err
    assert not (tmp_path / "o.csv").exists()


def test_interrupted_run_resumes_to_the_uninterrupted_result(
    images, weights, tmp_path, monkeypatch
):
    full, out = tmp_path / "full.parquet", tmp_path / "scores.parquet"
    assert score(images, full, weights) == 0
    real, calls = folder_scoring.score_batch, []

    def interrupt_on_second_call(encoder, x, *options):
        calls.append(len(x))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(encoder, x, *options)

    monkeypatch.setattr(folder_scoring, "score_batch", interrupt_on_second_call)
    assert score(images, out, weights) == 130
    journal = folder_scoring.journal_path(out)
    first_batch = all_files(images)[:4]
    assert [r["path"] for r in folder_scoring.read_journal(journal)] == first_batch
    assert not out.exists()
    with open(journal, "a") as handle:
        handle.write('{"path": "gray_05.png", "sco')  # a kill in the middle of a write

    monkeypatch.setattr(folder_scoring, "score_batch", real)
    assert score(images, out, weights) == 1  # a journal is there: refuse without --resume
    calls.clear()
    monkeypatch.setattr(
        folder_scoring, "score_batch", lambda e, x, *o: calls.append(len(x)) or real(e, x, *o)
    )
    assert score(images, out, weights, "--resume") == 0
    assert sum(calls) == len(all_files(images)) - len(first_batch)  # only the files not done
    expected, got = pd.read_parquet(full), pd.read_parquet(out)
    assert got["path"].is_unique and got["path"].tolist() == expected["path"].tolist()
    np.testing.assert_allclose(got["score"], expected["score"], rtol=1e-6)
    assert got["rank"].tolist() == expected["rank"].tolist()
    assert not journal.exists()


def test_refuse_without_resume_says_how(images, weights, tmp_path, capsys):
    out = tmp_path / "scores.parquet"
    folder_scoring.journal_path(out).write_text("")
    assert score(images, out, weights) == 1
    err = capsys.readouterr().err
    assert "--resume" in err and "delete the journal" in err


def test_resume_with_another_backbone_is_refused(images, weights, tmp_path, capsys):
    out = tmp_path / "scores.parquet"
    record = {c: None for c in folder_scoring.RECORD_COLUMNS}
    record.update(path="gray_00.png", score=1.0, status="ok", backbone="other", embedding="x")
    folder_scoring.journal_path(out).write_text(json.dumps(record) + "\n")
    assert score(images, out, weights, "--resume") == 1
    assert "'other'" in capsys.readouterr().err


def test_merge_journals_keeps_every_path_once(tmp_path):
    def record(path, value):
        return {"path": path, "score": value, "embedding_norm": 1.0, "status": "ok", "error": None,
                "backbone": "b", "embedding": "e"}  # fmt: skip

    rank0, rank1 = (folder_scoring.journal_path(tmp_path / "s.csv", r) for r in (0, 1))
    folder_scoring.append_journal(rank0, [record("a.png", 1.0), record("c.png", 3.0)])
    folder_scoring.append_journal(rank1, [record("b.png", 2.0), record("c.png", 4.0)])
    with open(rank1, "a") as handle:
        handle.write('{"path": "d.p')
    assert folder_scoring.existing_journals(tmp_path / "s.csv") == [rank0, rank1]
    merged = folder_scoring.merge_journals([rank0, rank1])
    assert merged["path"].tolist() == ["a.png", "b.png", "c.png"]
    assert merged["score"].tolist() == [1.0, 2.0, 4.0]
    final = folder_scoring.finalize(merged)
    assert final["rank"].tolist() == [3, 2, 1]


def test_galleries_png_and_html(images, weights, tmp_path):
    out, png, page = tmp_path / "scores.parquet", tmp_path / "g.png", tmp_path / "g.html"
    assert score(images, out, weights, "--gallery", str(png), "--n-gallery", "3") == 0
    assert png.read_bytes().startswith(b"\x89PNG") and png.stat().st_size > 5000
    # --resume on a finished output scores nothing again and still draws the gallery
    assert score(images, out, weights, "--gallery", str(page), "--n-gallery", "3", "--resume") == 0
    text = page.read_text()
    assert text.count("data:image/png;base64,") == 6
    frame = pd.read_parquet(out).sort_values("score")
    for value in [*frame["score"][:3], *frame["score"][-3:]]:
        assert f"{value:.4f}" in text


def test_entry_point_runs_as_a_module(images, weights, tmp_path):
    out = tmp_path / "scores.csv"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "jepabook", "score", str(images), "--backbone", "fmnist-cnn",
               "--weights", str(weights), "--out", str(out), "--quiet"]  # fmt: skip
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "scored 15 images, 0 errors" in result.stdout and f"wrote {out}" in result.stdout
    assert len(pd.read_csv(out)) == N_GRAY + len(RGB_SIZES)


def test_method_approx_writes_its_error_estimate_and_refuses_exact_only_flags(
    images, weights, tmp_path, capsys
):
    exact_out, approx_out = tmp_path / "exact.csv", tmp_path / "approx.csv"
    assert score(images, exact_out, weights) == 0
    flags = ("--method", "approx", "--probes", "4", "--steps", "2", "--seed", "1")
    assert score(images, approx_out, weights, *flags) == 0
    exact, approx = pd.read_csv(exact_out), pd.read_csv(approx_out)
    assert list(approx.columns) == folder_scoring.COLUMNS
    assert (exact["method"] == "exact").all() and (exact["score_stderr"] == 0).all()
    assert (approx["method"] == "approx:probes=4,steps=2,seed=1").all()
    assert (approx["score_stderr"] > 0).all()
    assert approx["path"].tolist() == exact["path"].tolist()
    assert not np.allclose(approx["score"], exact["score"])  # 8 of K=16 products: not exact
    assert np.corrcoef(approx["score"], exact["score"])[0, 1] > 0.5
    capsys.readouterr()
    assert score(images, tmp_path / "x.csv", weights, "--probes", "4") == 2
    assert "--probes" in capsys.readouterr().err


def test_resume_with_another_method_is_refused(images, weights, tmp_path, capsys):
    out = tmp_path / "scores.parquet"
    record = {c: None for c in folder_scoring.RECORD_COLUMNS}
    record.update(path="gray_00.png", score=1.0, status="ok", method="exact", score_stderr=0.0)
    record.update(backbone="fmnist-cnn", embedding="output")
    folder_scoring.journal_path(out).write_text(json.dumps(record) + "\n")
    assert score(images, out, weights, "--resume", "--method", "approx") == 1
    assert "method" in capsys.readouterr().err
