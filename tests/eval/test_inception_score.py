"""Inception Score on synthetic class probabilities with known values."""
import numpy as np
import pytest

from gladiff.eval.inception_score import inception_score, softmax


def test_uniform_predictions_score_one():
    assert inception_score(np.full((100, 1008), 1 / 1008)) == pytest.approx(1.0, abs=1e-12)


def test_identical_confident_predictions_score_one():
    p = np.zeros((50, 10))
    p[:, 3] = 1
    assert inception_score(p) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("num_classes", [2, 10, 1008])
def test_distinct_one_hot_predictions_score_number_of_classes(num_classes):
    # Each class predicted with certainty equally often: KL = log C for every sample.
    p = np.eye(num_classes)[np.arange(3 * num_classes) % num_classes]
    assert inception_score(p) == pytest.approx(num_classes, rel=1e-12)


def test_matches_entropy_formula_on_random_logits():
    # exp(E KL(p || mean p)) = exp(H(mean p) - E H(p)).
    rng = np.random.default_rng(0)
    p = softmax(rng.normal(scale=3, size=(400, 20)))
    marginal = p.mean(0)
    expected = np.exp(-(marginal * np.log(marginal)).sum() + (p * np.log(p)).sum(1).mean())
    assert inception_score(p, split_size=400) == pytest.approx(expected, rel=1e-10)


def test_splits_of_5000_are_averaged():
    # 10,000 samples = 2 ADM splits: the first sees 2 classes (score 2), the second 4 (score 4).
    first = np.eye(4)[np.arange(5000) % 2]
    second = np.eye(4)[np.arange(5000) % 4]
    both = np.concatenate([first, second])
    assert inception_score(both) == pytest.approx(3.0, rel=1e-12)
    # As one split: confident predictions, so the score is exp(entropy of the class marginal).
    marginal = both.mean(0)
    expected = np.exp(-(marginal * np.log(marginal)).sum())
    assert inception_score(both, split_size=10000) == pytest.approx(expected, rel=1e-12)


def test_softmax_is_stable_and_normalised():
    p = softmax(np.array([[1000.0, 1000.0], [0.0, np.log(3.0)]]))
    np.testing.assert_allclose(p, [[0.5, 0.5], [0.25, 0.75]])


def test_rejects_unnormalised_input():
    with pytest.raises(ValueError, match="softmax"):
        inception_score(np.ones((4, 3)))
