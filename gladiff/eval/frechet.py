"""Fréchet distance between Gaussians fitted to features (the mathematics behind FID and sFID).

For ``N(mu1, S1)`` and ``N(mu2, S2)``::

    d^2 = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})

The square root of the (non-symmetric) product is taken with ``scipy.linalg.sqrtm`` as the FID
reference code (TTUR, and ADM's evaluator after it) does, including its two safeguards: when the
product is numerically singular and the root comes out non-finite, ``eps`` is added to both
diagonals and the root recomputed; a complex result is accepted only when the imaginary part of its
diagonal is negligible, and its real part is used.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy import linalg


class FrechetDistanceError(ValueError):
    """The matrix square root has a significant imaginary component (the inputs are not covariances)."""


def gaussian_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a feature set.

    Args:
        features: ``[N, D]`` array-like, one row per sample (N >= 2).

    Returns:
        ``(mu [D], sigma [D, D])`` in float64; ``sigma`` is the unbiased sample covariance
        (``np.cov(rowvar=False)``, as the ADM evaluator computes it).
    """
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {x.shape}")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 feature rows for a covariance, got {x.shape[0]}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _sqrtm(a: np.ndarray) -> np.ndarray:
    # scipy warns on singular input; the caller checks finiteness itself, as the FID reference does.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        return linalg.sqrtm(a)


def trace_sqrt_product(sigma1, sigma2, eps: float = 1e-6, atol: float = 1e-3) -> float:
    """``tr((sigma1 @ sigma2)^{1/2})`` for two covariance matrices ``[D, D]``.

    Falls back to ``(sigma1 + eps I)(sigma2 + eps I)`` (with a warning) when the product's root is
    not finite, and raises ``FrechetDistanceError`` when the root's diagonal has an imaginary part
    larger than ``atol``.
    """
    s1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    s2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if s1.shape != s2.shape or s1.shape[0] != s1.shape[1]:
        raise ValueError(f"covariances must be square and of one shape, got {s1.shape} and {s2.shape}")
    covmean = _sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        warnings.warn(f"Fréchet distance: singular product of covariances; adding {eps} to their "
                      "diagonals", RuntimeWarning, stacklevel=2)
        offset = np.eye(s1.shape[0]) * eps
        covmean = _sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.abs(np.diagonal(covmean).imag).max()
        if imag > atol:
            raise FrechetDistanceError(
                f"matrix square root has an imaginary component of {imag:.3g} on its diagonal "
                f"(tolerance {atol}); are both inputs covariance matrices?")
        covmean = covmean.real
    return float(np.trace(covmean))


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Squared Fréchet (2-Wasserstein) distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``.

    Args:
        mu1, mu2: ``[D]`` means (scalars allowed for D = 1).
        sigma1, sigma2: ``[D, D]`` covariances (scalars allowed for D = 1).
        eps: diagonal offset used only when the product of the covariances is singular.

    Returns:
        The distance as a Python float (this is "FID" when the features are Inception pool_3).
    """
    m1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    m2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    s1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    s2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    if m1.shape != m2.shape or m1.ndim != 1:
        raise ValueError(f"means must be vectors of one length, got {m1.shape} and {m2.shape}")
    if s1.shape != (m1.shape[0],) * 2 or s2.shape != s1.shape:
        raise ValueError(f"covariances must be [{m1.shape[0]}, {m1.shape[0]}] to match the means, "
                         f"got {s1.shape} and {s2.shape}")
    diff = m1 - m2
    tr_covmean = trace_sqrt_product(s1, s2, eps=eps)
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def frechet_distance_features(features1, features2, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``[N1, D]`` and ``[N2, D]``."""
    return frechet_distance(*gaussian_statistics(features1), *gaussian_statistics(features2), eps=eps)
