"""Improved precision and recall (Kynkäänniemi et al. 2019) as the ADM evaluator computes them.

Each feature set is taken as an estimate of its manifold: the union of balls around its points,
each ball's radius the distance to that point's k-th nearest neighbour within its own set (k = 3;
the point itself does not count as a neighbour). Then

- precision = fraction of sample points inside the reference manifold,
- recall    = fraction of reference points inside the sample manifold.

Distances are squared Euclidean (comparisons are unaffected), computed blockwise on the features'
device. ADM's evaluator first tries the distance matrix in float16; we use float32 throughout, which
can only change points lying within float16 rounding of a ball's boundary.
"""
from __future__ import annotations

import numpy as np
import torch

DEFAULT_K = 3


def _as_tensor(x, device) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x)
    if t.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {tuple(t.shape)}")
    return t.to(device=device, dtype=torch.float32)


def _squared_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``[Na, Nb]`` squared distances ``|a_i|^2 - 2 a_i.b_j + |b_j|^2``, clamped at 0."""
    d = (a * a).sum(1)[:, None] - 2.0 * (a @ b.T) + (b * b).sum(1)[None, :]
    return d.clamp_min_(0.0)


def manifold_radii(features, k: int = DEFAULT_K, block_size: int = 4096, device=None) -> torch.Tensor:
    """Squared distance from every point to its k-th nearest other point in the same set.

    Args:
        features: ``[N, D]`` array or tensor, N > k.
        k: neighbourhood size (ADM: 3).
        block_size: rows of the distance matrix held at once.
        device: where to compute (default: the tensor's device, or CPU for arrays).

    Returns:
        ``[N]`` float32 tensor of squared radii.
    """
    x = _as_tensor(features, device or (features.device if torch.is_tensor(features) else "cpu"))
    if x.shape[0] <= k:
        raise ValueError(f"need more than k={k} points to estimate a manifold, got {x.shape[0]}")
    radii = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    for start in range(0, x.shape[0], block_size):
        d = _squared_distances(x[start:start + block_size], x)
        # The (k+1)-th smallest entry of a row: its smallest is the point itself, at distance 0.
        radii[start:start + block_size] = d.kthvalue(k + 1, dim=1).values
    return radii


def precision_recall(reference, samples, k: int = DEFAULT_K, block_size: int = 4096,
                     device=None) -> tuple[float, float]:
    """Improved precision and recall of ``samples`` against ``reference``.

    Args:
        reference: ``[N1, D]`` reference features (the real data).
        samples: ``[N2, D]`` sample features.
        k: neighbourhood size for both manifolds (ADM: 3).
        block_size: rows and columns of the distance matrix held at once.
        device: where to compute (default: the reference tensor's device, or CPU for arrays).

    Returns:
        ``(precision, recall)`` as floats in [0, 1].
    """
    if device is None:
        device = reference.device if torch.is_tensor(reference) else "cpu"
    ref = _as_tensor(reference, device)
    sam = _as_tensor(samples, device)
    if ref.shape[1] != sam.shape[1]:
        raise ValueError(f"reference and samples differ in feature size: {ref.shape[1]} vs {sam.shape[1]}")
    ref_radii = manifold_radii(ref, k, block_size)
    sam_radii = manifold_radii(sam, k, block_size)
    sample_in_ref = torch.zeros(sam.shape[0], dtype=torch.bool, device=ref.device)
    ref_in_sample = torch.zeros(ref.shape[0], dtype=torch.bool, device=ref.device)
    for i in range(0, ref.shape[0], block_size):
        for j in range(0, sam.shape[0], block_size):
            d = _squared_distances(ref[i:i + block_size], sam[j:j + block_size])
            sample_in_ref[j:j + block_size] |= (d <= ref_radii[i:i + block_size, None]).any(0)
            ref_in_sample[i:i + block_size] |= (d <= sam_radii[None, j:j + block_size]).any(1)
    return float(sample_in_ref.float().mean()), float(ref_in_sample.float().mean())
