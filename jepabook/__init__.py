"""jepabook: JEPA-SCORE, Gaussian-embedding JEPAs and the experiments of the book.

The main entry point is `jepa_score(model, x)`: the sum of log singular values of the encoder's
Jacobian at each sample, the density the paper shows a Gaussian-embedding JEPA learns.
"""

from jepabook.score import jepa_score, reference_jepa_score

__all__ = ["jepa_score", "reference_jepa_score"]
__version__ = "0.1.0"
