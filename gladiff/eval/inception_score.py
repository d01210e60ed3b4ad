"""Inception Score: ``exp(E_x KL(p(y|x) || p(y)))``, averaged over splits as the ADM evaluator does.

ADM's evaluator (after improved-GAN) cuts the predictions into consecutive splits of 5,000 samples
(so 10 splits for the usual 50,000; the last split may be shorter), computes the score within each
split against that split's marginal, and returns the mean over splits. The class probabilities are
the softmax of Inception's 1008-way logits taken *without* the final layer's bias
(``pool_3 @ W``), which is what the evaluator's graph computes.
"""
from __future__ import annotations

import numpy as np

ADM_SPLIT_SIZE = 5000


def softmax(logits) -> np.ndarray:
    """Row-wise softmax of ``[N, C]`` logits, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def inception_score(probs, split_size: int = ADM_SPLIT_SIZE) -> float:
    """Inception Score of class probabilities.

    Args:
        probs: ``[N, C]`` rows of class probabilities (each row sums to 1).
        split_size: samples per split; ADM uses 5,000.

    Returns:
        Mean over splits of ``exp(mean_i sum_c p_ic (log p_ic - log mean_j p_jc))``; ranges from 1
        (every prediction equal) to C (confident, evenly spread over all classes).
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"probs must be a non-empty [N, C] array, got shape {p.shape}")
    if (p < 0).any() or not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise ValueError("probs must be non-negative rows summing to 1 (apply softmax to logits first)")
    if split_size < 1:
        raise ValueError(f"split_size must be >= 1, got {split_size}")
    scores = []
    for start in range(0, p.shape[0], split_size):
        part = p[start:start + split_size]
        marginal = part.mean(axis=0, keepdims=True)
        # 0 * log 0 is taken as 0 (a class with zero probability contributes nothing).
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.where(part > 0, part * (np.log(part) - np.log(marginal)), 0.0)
        scores.append(np.exp(kl.sum(axis=1).mean()))
    return float(np.mean(scores))
