"""The built-in digit quality check: classifier accuracy, separation of good and bad samples, caching."""
import numpy as np
import pytest
import torch

import gladiff.eval.digits as digits_mod
from gladiff.data.digits import digits_split
from gladiff.eval.digits import DigitScorer, digit_classifier, to_digit_batch, train_digit_classifier


@pytest.fixture(scope="module")
def scorer():
    # Memory only: one classifier per test session, shared with the other tests that score digits.
    return DigitScorer(16, cache_dir=False)


@pytest.fixture(scope="module")
def held_out():
    _, _, images, labels = digits_split(16)
    return images, labels


def test_held_out_accuracy_at_least_97_percent(scorer, held_out):
    images, labels = held_out
    logits = scorer.net(torch.from_numpy(images).float()[:, None] / 255)
    accuracy = float((logits.argmax(1).numpy() == labels).mean())
    assert accuracy >= 0.97
    assert scorer.score(images, labels)["accuracy"] == pytest.approx(accuracy)


def test_metric_separates_good_from_noisy_samples(scorer, held_out):
    images, labels = held_out
    good = scorer.score(images, labels)
    rng = np.random.default_rng(0)
    noisy = np.clip(images + rng.normal(0, 80, images.shape), 0, 255).astype(np.uint8)
    bad = scorer.score(noisy, rng.permutation(labels))
    assert good["n"] == bad["n"] == len(labels)
    assert good["fd_real_halves"] == bad["fd_real_halves"] > 0
    # Real held-out digits sit at the real-vs-real level; noisy ones are far off and misread.
    assert good["accuracy"] >= 0.97 and good["fd"] < 1.5 * good["fd_real_halves"]
    assert bad["accuracy"] < 0.3 and bad["fd"] > 10 * bad["fd_real_halves"]


def test_fd_matches_direct_computation(scorer, held_out):
    from gladiff.eval.frechet import frechet_distance_features

    images, labels = held_out
    feats = scorer.features(images)
    real = scorer.features(digits_mod.digits_arrays(16)[0])
    assert scorer.score(images, labels)["fd"] == pytest.approx(frechet_distance_features(feats, real), rel=1e-9)
    assert feats.shape == (len(images), digits_mod.FEATURE_DIM)


def test_input_layouts_and_resolutions(scorer, held_out):
    images, labels = held_out
    reference = scorer.features(images)
    for variant in (images[..., None], np.repeat(images[..., None], 3, axis=-1),
                    torch.from_numpy(images)[:, None]):
        np.testing.assert_allclose(scorer.features(variant), reference, rtol=1e-5, atol=1e-5)
    # The same digits rendered at 8 px (their native size) and 32 px are resized to the classifier's.
    for size in (8, 32):
        _, _, other, other_labels = digits_split(size)
        assert np.array_equal(other_labels, labels)
        assert scorer.score(other, other_labels)["accuracy"] >= 0.95


def test_bad_inputs_are_named(scorer, held_out):
    images, labels = held_out
    with pytest.raises(ValueError, match="uint8"):
        scorer.score(images.astype(np.float32), labels)
    with pytest.raises(ValueError, match="labels"):
        scorer.score(images, labels[:-1])
    with pytest.raises(ValueError, match="0..9"):
        scorer.score(images, labels + 1)
    with pytest.raises(ValueError, match=r"\[N, H, W\]"):
        to_digit_batch(np.zeros((2, 5, 5, 2), np.uint8), 16)


def test_classifier_is_cached_in_process_and_on_disk(scorer, tmp_path, monkeypatch):
    assert DigitScorer(16, cache_dir=False).net is scorer.net  # no retraining in-process
    # First process: "trains" (the session's classifier stands in, to save time) and saves it.
    monkeypatch.setattr(digits_mod, "_CLASSIFIERS", {})
    monkeypatch.setattr(digits_mod, "train_digit_classifier", lambda *a, **k: scorer.net)
    assert digit_classifier(16, cache_dir=tmp_path) is scorer.net
    assert len(list((tmp_path / "digits").glob("classifier-16px-*.pt"))) == 1
    # A later process (empty in-process cache) loads the file instead of training.
    monkeypatch.setattr(digits_mod, "_CLASSIFIERS", {})
    monkeypatch.setattr(digits_mod, "train_digit_classifier",
                        lambda *a, **k: pytest.fail("trained although a cached classifier exists"))
    loaded = digit_classifier(16, cache_dir=tmp_path)
    assert loaded is not scorer.net and not loaded.training
    for a, b in zip(loaded.state_dict().values(), scorer.net.state_dict().values()):
        assert torch.equal(a, b)


def test_repeated_scoring_reuses_real_statistics(scorer, held_out, monkeypatch):
    images, labels = held_out
    first = scorer.score(images[:100], labels[:100])
    monkeypatch.setattr(digits_mod, "digits_arrays", lambda *a: pytest.fail("real digits recomputed"))
    assert scorer.score(images[:100], labels[:100]) == first


def test_training_is_deterministic():
    # Same recipe, shortened to one epoch: bit-identical weights.
    a, b = train_digit_classifier(16, epochs=1), train_digit_classifier(16, epochs=1)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
