"""Improved precision/recall on point sets whose answer is known by hand, and against brute force."""
import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist

from gladiff.eval.precision_recall import manifold_radii, precision_recall


def test_radii_on_a_line():
    # Points 0..9: the 3rd nearest other point is 3 away at the ends (neighbours 1, 2, 3 away) and
    # 2 away elsewhere (e.g. point 1: neighbours 1, 1, 2 away). Radii are squared.
    x = np.arange(10.0)[:, None]
    expected = np.array([3, 2, 2, 2, 2, 2, 2, 2, 2, 3]) ** 2
    np.testing.assert_allclose(manifold_radii(x, k=3).numpy(), expected)


def test_known_precision_and_recall():
    # Reference: 0..9 on a line. Samples: copies of 0..4 plus a tight far-away cluster of 5.
    # Precision: only the 5 copies lie in reference balls -> 0.5.
    # Recall: sample balls around 0..4 have radii 3, 2, 2, 2, 3 (the cluster is far), covering
    # reference points 0..7 -> 0.8.
    ref = np.arange(10.0)[:, None]
    samples = np.concatenate([np.arange(5.0), 1000 + 0.01 * np.arange(5.0)])[:, None]
    p, r = precision_recall(ref, samples, k=3)
    assert (p, r) == (pytest.approx(0.5), pytest.approx(0.8))


def test_identical_and_disjoint_sets():
    x = np.random.default_rng(0).normal(size=(200, 8))
    assert precision_recall(x, x) == (1.0, 1.0)
    assert precision_recall(x, x + 100.0) == (0.0, 0.0)


def _brute_force(ref, sam, k):
    d_rr, d_ss, d_rs = cdist(ref, ref), cdist(sam, sam), cdist(ref, sam)
    r_ref = np.sort(d_rr, axis=1)[:, k]
    r_sam = np.sort(d_ss, axis=1)[:, k]
    precision = np.mean((d_rs <= r_ref[:, None]).any(0))
    recall = np.mean((d_rs <= r_sam[None, :]).any(1))
    return precision, recall


@pytest.mark.parametrize("k", [1, 3, 5])
def test_matches_brute_force_with_blocking(k):
    # A sample cloud shifted along one axis: precision and recall strictly between 0 and 1. Small
    # blocks exercise the blockwise loops.
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(300, 16))
    sam = rng.normal(size=(250, 16))
    sam[:, 0] += 2.0
    expected = _brute_force(ref, sam, k)
    assert 0.05 < expected[0] < 0.95 and 0.05 < expected[1] < 0.95
    got = precision_recall(torch.tensor(ref), sam, k=k, block_size=64)
    np.testing.assert_allclose(got, expected, atol=1.5 / 250)  # at most a boundary point off (float32)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="more than k"):
        manifold_radii(np.zeros((3, 2)), k=3)
    with pytest.raises(ValueError, match="feature size"):
        precision_recall(np.zeros((10, 2)), np.zeros((10, 3)))
