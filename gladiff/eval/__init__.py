"""Evaluation: the ADM protocol metrics (FID, sFID, Inception Score, precision/recall) and the
built-in digit and glyph quality checks.

- ``frechet``: Fréchet distance of Gaussians fitted to features (FID, sFID, the digit FD).
- ``inception_score``, ``precision_recall``: the other ADM metrics, on features/probabilities.
- ``inception``: the FID Inception-v3 (TF 2015-12-05 graph) and its weight loader.
- ``adm``: the ADM evaluation suite on sample / reference batches, with cached reference statistics.
- ``digits``: ``DigitScorer``, accuracy and Fréchet distance under a small digit classifier.
- ``glyphs``: ``GlyphScorer``, accuracy, Fréchet distance, precision and recall under the shipped
  glyph classifier, each with its real-vs-real floor.
- ``batch``: what the two checks share (image layouts, deterministic CPU training).
"""
from .digits import DigitScorer
from .glyphs import GlyphScorer
from .frechet import frechet_distance, gaussian_statistics, trace_sqrt_product
from .inception_score import inception_score
from .precision_recall import manifold_radii, precision_recall

__all__ = ["DigitScorer", "GlyphScorer", "frechet_distance", "gaussian_statistics", "trace_sqrt_product",
           "inception_score", "precision_recall", "manifold_radii"]
