"""The change-of-variables estimate of log p_X from a Gaussian-embedding encoder (Lemma 2 / Theorem 1).

For an encoder f: R^D -> R^K whose embeddings are N(0, I_K),

    full(x) = JEPA-SCORE(x) + log N(f(x); 0, I_K),

which is exactly log p_X(x) when K = D and f pushes p_X onto N(0, I) (an injective f; the paper's
Lemma 2; Theorem 1 is its K <= D form, up to level sets). For K < D it is not a density of x:
JEPA-SCORE then measures how f stretches volume
within the directions it keeps, and the level sets of f are left out (see the change-of-variables
chapter).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from jepabook.score import jepa_score

LOG_2PI = math.log(2 * math.pi)


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) for z (n, D): (n,) in z's dtype."""
    return -0.5 * (z.pow(2).sum(-1) + z.shape[-1] * LOG_2PI)


def change_of_variables(
    model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, **score_options
) -> dict[str, torch.Tensor]:
    """JEPA-SCORE, log N(f(x); 0, I_K) and their sum at x (n, ...), detached, float64.

    score_options go to `jepa_score`. Returns {"jepa_score": (n,), "log_normal": (n,), "full": (n,)}.
    """
    score = jepa_score(model, x, **score_options)
    with torch.no_grad():
        log_normal = log_standard_normal(model(x)).to(score)
    return {"jepa_score": score, "log_normal": log_normal, "full": score + log_normal}
