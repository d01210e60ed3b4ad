"""The built-in glyph check: the shipped classifier reads held-out renders, the check separates real
renders from garbage, the numbers are FD / precision / recall computed independently, and the recipe
that made the weights still trains (a smaller classifier, retrained here)."""
import numpy as np
import pytest
import torch

import gladiff.eval.glyphs as glyphs_mod
from gladiff.data.glyphs import CLASSES, NUM_CLASSES, glyphs_arrays
from gladiff.eval.frechet import frechet_distance_features
from gladiff.eval.glyphs import (FEATURE_DIM, REFERENCE_SEED, TEST_SEED, WEIGHTS, GlyphScorer, glyph_classifier,
                                 held_out_accuracy, load_weights, save_weights, to_glyph_batch,
                                 train_glyph_classifier)
from gladiff.eval.precision_recall import precision_recall

N_REF = 1000  # two halves of 500 real renders: enough for a 128-d covariance, quick at 32 px
# Small convolutions: one thread (see tests/conftest.py); training pins its own.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def scorer():
    return GlyphScorer(N_REF)


@pytest.fixture(scope="module")
def held_out():
    """Real renders the classifier never saw, as samples would come: 500 at 32 px (~0.3 s)."""
    return glyphs_arrays(500, 32, TEST_SEED)


def confusion(net, images, labels) -> np.ndarray:
    with torch.no_grad():
        preds = net(to_glyph_batch(images)).argmax(1).numpy()
    c = np.zeros((NUM_CLASSES, NUM_CLASSES), int)
    np.add.at(c, (labels, preds), 1)
    return c


@pytest.mark.parametrize("size", [32, 64])
def test_shipped_classifier_reads_held_out_renders(size):
    """>= 97% of held-out real renders (10 per class at each test size, and the 2,000 per size the
    weights file records) and no pair of classes confused more than twice in 20: the class set has no
    look-alikes (o next to O would be confused about half the time)."""
    net = glyph_classifier()
    images, labels = glyphs_arrays(10 * NUM_CLASSES, size, TEST_SEED)
    c = confusion(net, images, labels)
    assert np.trace(c) / c.sum() >= 0.97
    off = c + c.T
    np.fill_diagonal(off, 0)
    assert off.max() <= 2, [(CLASSES[i], CLASSES[j]) for i, j in zip(*np.nonzero(off == off.max()))]
    saved = torch.load(WEIGHTS, weights_only=True)["held_out_accuracy"]
    assert min(saved.values()) >= 0.97 and set(saved) == {"32px", "64px", "128px"}


def test_weights_file_matches_the_code_and_refuses_another(tmp_path):
    saved = torch.load(WEIGHTS, weights_only=True)
    assert saved["recipe"] == glyphs_mod.RECIPE and saved["classes"] == "".join(CLASSES)
    assert WEIGHTS.stat().st_size < 700_000  # float16: small enough to ship
    net = glyph_classifier()
    other = tmp_path / "other.pt"
    save_weights(net, other)
    assert all(torch.equal(a, b) for a, b in zip(load_weights(other).state_dict().values(),
                                                 net.state_dict().values()))
    saved = torch.load(other, weights_only=True)
    saved["classes"] = saved["classes"] + "o"
    torch.save(saved, other)
    with pytest.raises(RuntimeError, match="remake it"):
        load_weights(other)


def test_real_renders_score_at_the_floor_and_noise_far_from_it(scorer, held_out):
    images, labels = held_out
    good = scorer.score(images, labels)
    assert good["n"] == good["n_reference"] == 500 and good["image_size"] == 32
    assert good["accuracy"] >= 0.97
    # Held-out renders are as close to the reference as other real renders are.
    assert good["fd"] < 1.3 * good["fd_real_halves"]
    assert good["precision"] > 0.85 * good["precision_real_halves"] and good["recall"] > 0.85 * good["recall_real_halves"]
    # Uniform noise with random labels: read at chance (1/49), far off, outside the real manifold.
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, images.shape, dtype=np.uint8)
    bad = scorer.score(noise, rng.integers(0, NUM_CLASSES, len(noise)))
    assert bad["accuracy"] < 0.1
    assert bad["fd"] > 20 * good["fd_real_halves"]
    assert bad["precision"] < 0.05 and bad["recall"] < 0.05
    assert bad["fd_real_halves"] == good["fd_real_halves"]  # the floor depends on N, not on the samples
    # In between: the same renders with Gaussian pixel noise of std 30 are still read (~94%) but sit
    # several floors away and partly off the real manifold.
    noisy = scorer.score(np.clip(images + rng.normal(0, 30, images.shape), 0, 255).astype(np.uint8), labels)
    assert noisy["accuracy"] > 0.8
    assert 3 * good["fd"] < noisy["fd"] < bad["fd"] / 10
    assert noisy["precision"] < good["precision"] - 0.15
    # Right images, wrong labels: accuracy falls, the label-free numbers do not move.
    shuffled = scorer.score(images, np.roll(labels, 1))
    assert shuffled["accuracy"] < 0.05 and shuffled["fd"] == good["fd"]


def test_numbers_are_the_shared_metrics_on_the_reference_features(scorer, held_out):
    images, labels = held_out
    got = scorer.score(images[:200], labels[:200])
    feats = scorer.features(images[:200])
    assert feats.shape == (200, FEATURE_DIM)
    # The reference: the first 200 of each half of real renders 0..999 of REFERENCE_SEED at 32 px.
    real = scorer.features(glyphs_arrays(N_REF, 32, REFERENCE_SEED)[0])
    a, b = real[:200], real[500:700]
    assert got["fd"] == pytest.approx(frechet_distance_features(feats, a), rel=1e-9)
    assert got["fd_real_halves"] == pytest.approx(frechet_distance_features(b, a), rel=1e-9)
    assert (got["precision"], got["recall"]) == pytest.approx(precision_recall(a, feats))
    assert (got["precision_real_halves"], got["recall_real_halves"]) == pytest.approx(precision_recall(a, b))


def test_input_layouts(scorer, held_out):
    images, _ = held_out
    reference = scorer.features(images[:20])
    np.testing.assert_allclose(scorer.features(torch.from_numpy(images[:20]).permute(0, 3, 1, 2)), reference,
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="uint8"):
        scorer.score(images.astype(np.float32))
    with pytest.raises(ValueError, match="labels"):
        scorer.score(images, np.zeros(3, np.int64))
    with pytest.raises(ValueError, match=f"0..{NUM_CLASSES - 1}"):
        scorer.score(images[:10], np.full(10, NUM_CLASSES))
    with pytest.raises(ValueError, match="multiple of 16"):
        scorer.score(np.zeros((10, 24, 24, 3), np.uint8))


def test_repeated_scoring_reuses_the_real_renders(scorer, held_out, monkeypatch):
    images, labels = held_out
    first = scorer.score(images[:100], labels[:100])
    monkeypatch.setattr(glyphs_mod, "glyphs_arrays", lambda *a, **k: pytest.fail("real glyphs rendered again"))
    assert scorer.score(images[:100], labels[:100]) == first


def test_the_recipe_trains_a_smaller_classifier_that_reads_glyphs():
    """The shipped weights' training code, cut to 3,000 renders, 4 epochs of batch 32 and half widths
    (~11 s here; the full recipe takes ~4 min): held-out accuracy far above chance (1/49). The
    look-alike guard is the shipped classifier's confusion test above: a class set with o next to O
    makes load_weights refuse the file until it is remade, and the remade one confuses the pair."""
    net = train_glyph_classifier(n_train=3000, epochs=4, widths=(16, 16, 32, 64), batch_size=32)
    assert held_out_accuracy(net, 32, n=10 * NUM_CLASSES) >= 0.4


def test_training_is_deterministic():
    a = train_glyph_classifier(n_train=256, epochs=1, widths=(4, 4, 8, 8))
    b = train_glyph_classifier(n_train=256, epochs=1, widths=(4, 4, 8, 8))
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
