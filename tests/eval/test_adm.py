"""The ADM suite's plumbing: batch files and folders, reference caching, metric assembly; and the
numbers against ADM's evaluation rules restated in this file.

A cheap stand-in replaces Inception (its maths is tested in test_inception.py); the metrics must
equal the direct computations on the stand-in's features, and the restated ADM evaluator's.
"""
import numpy as np
import pytest
from PIL import Image
from scipy import linalg

from gladiff.eval.adm import ImageSource, evaluate
from gladiff.eval.frechet import frechet_distance, gaussian_statistics
from gladiff.eval.inception_score import inception_score, softmax
from gladiff.eval.precision_recall import precision_recall

_PROJ = np.random.default_rng(123).normal(size=(3 * 4 * 4, 3 * 4 * 4 + 5))


def _features(images):
    # 4x4 average-pooled pixels through a fixed random projection: "pool" (8-d), "spatial" (6-d)
    # and 5 "logits".
    n, h, w, c = images.shape
    x = images.astype(np.float64).reshape(n, 4, h // 4, 4, w // 4, c).mean((2, 4)).reshape(n, -1) / 255
    z = x @ _PROJ
    return {"pool": z[:, :8].astype(np.float32), "spatial": z[:, 8:14].astype(np.float32),
            "logits": z[:, -5:].astype(np.float32)}


class FakeExtractor:
    def __init__(self):
        self.calls = []

    def __call__(self, batches, desc):
        assert len(batches) >= 1  # sized, for progress bars
        images = np.concatenate(list(batches))
        self.calls.append((desc, len(images)))
        return _features(images)


def _images(n, seed, shift=0):
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(128 + shift, 40, (n, 8, 8, 3)), 0, 255).astype(np.uint8)


def test_npz_batches_stream_in_order(tmp_path):
    images = _images(23, 0)
    for save in (np.savez, np.savez_compressed):
        path = tmp_path / f"{save.__name__}.npz"
        save(path, images, np.arange(23) % 10)
        source = ImageSource(path)
        assert source.shape == (23, 8, 8, 3) and len(source.batches(5)) == 5
        np.testing.assert_array_equal(np.concatenate(list(source.batches(5))), images)
        np.testing.assert_array_equal(source.labels(), np.arange(23) % 10)
    np.savez(tmp_path / "grey.npz", images[..., 0])
    grey = ImageSource(tmp_path / "grey.npz")
    assert grey.shape == (23, 8, 8, 1) and grey.labels() is None
    np.testing.assert_array_equal(grey.load_all()[..., 0], images[..., 0])


def test_bad_batches_are_named(tmp_path):
    np.savez(tmp_path / "float.npz", np.zeros((2, 4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        ImageSource(tmp_path / "float.npz")
    np.savez(tmp_path / "nchw.npz", np.zeros((2, 3, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="channels last"):
        ImageSource(tmp_path / "nchw.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros((2, 4, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="arr_0"):
        ImageSource(tmp_path / "other.npz")
    with pytest.raises(FileNotFoundError):
        ImageSource(tmp_path / "missing.npz")


def test_image_folder(tmp_path):
    images = _images(5, 1)
    folder = tmp_path / "ref"
    (folder / "sub").mkdir(parents=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / ("sub" if i % 2 else "") / f"{i:03d}.png")
    source = ImageSource(folder)
    assert source.shape == (5, 8, 8, 3)
    order = [str(p.relative_to(folder)) for p in source.files]
    expected = np.stack([images[int(name[-7:-4])] for name in order])
    np.testing.assert_array_equal(np.concatenate(list(source.batches(2))), expected)
    before = source.content_hash()
    Image.fromarray(images[0] // 2).save(folder / "000.png")
    assert ImageSource(folder).content_hash() != before
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(folder / "zzz.png")
    with pytest.raises(ValueError, match="one size"):
        list(ImageSource(folder).batches(8))


def test_metrics_equal_direct_computation_and_reference_is_cached(tmp_path):
    ref_images, sample_images = _images(60, 2), _images(50, 3, shift=20)
    np.savez(tmp_path / "ref.npz", ref_images)
    np.savez(tmp_path / "samples.npz", sample_images, np.zeros(50, np.int64))
    fake = FakeExtractor()
    kwargs = dict(extractor=fake, extractor_id="fake", cache_dir=tmp_path / "cache", device="cpu", progress=False)
    got = evaluate(tmp_path / "samples.npz", tmp_path / "ref.npz", batch_size=16, **kwargs)

    ref, sam = _features(ref_images), _features(sample_images)
    p, r = precision_recall(ref["pool"], sam["pool"])
    assert got["fid"] == pytest.approx(frechet_distance(*gaussian_statistics(sam["pool"]),
                                                        *gaussian_statistics(ref["pool"])), rel=1e-6)
    assert got["sfid"] == pytest.approx(frechet_distance(*gaussian_statistics(sam["spatial"]),
                                                         *gaussian_statistics(ref["spatial"])), rel=1e-6)
    assert got["inception_score"] == pytest.approx(inception_score(softmax(sam["logits"])), rel=1e-6)
    assert (got["precision"], got["recall"]) == (p, r)
    assert got["fid"] > 0.1 and 0 < got["precision"] <= 1
    assert (got["n_samples"], got["n_reference"]) == (50, 60)
    assert fake.calls == [("reference features", 60), ("sample features", 50)]

    # Second run: reference statistics from the cache, samples as an in-memory array.
    again = evaluate(sample_images, tmp_path / "ref.npz", **kwargs)
    assert fake.calls[2:] == [("sample features", 50)]
    assert again == pytest.approx(got)
    # Changed reference content -> recomputed.
    np.savez(tmp_path / "ref.npz", ref_images[::-1])
    evaluate(sample_images, tmp_path / "ref.npz", **kwargs)
    assert fake.calls[3:] == [("reference features", 60), ("sample features", 50)]


def test_precomputed_reference_statistics_are_used(tmp_path):
    # An ADM reference batch carries mu/sigma (pool) and mu_s/sigma_s (spatial): FID/sFID use them,
    # precision/recall still use the reference images' features.
    ref_images, sample_images = _images(40, 4), _images(40, 5)
    rng = np.random.default_rng(6)
    stats = {"mu": rng.normal(size=8), "sigma": np.eye(8) * 2.0, "mu_s": rng.normal(size=6), "sigma_s": np.eye(6)}
    np.savez(tmp_path / "ref.npz", ref_images, **stats)
    got = evaluate(sample_images, tmp_path / "ref.npz", extractor=FakeExtractor(), extractor_id="fake",
                   cache_dir=tmp_path / "cache", device="cpu", progress=False)
    sam, ref = _features(sample_images), _features(ref_images)
    assert got["fid"] == pytest.approx(frechet_distance(*gaussian_statistics(sam["pool"]),
                                                        stats["mu"], stats["sigma"]), rel=1e-6)
    assert got["sfid"] == pytest.approx(frechet_distance(*gaussian_statistics(sam["spatial"]),
                                                         stats["mu_s"], stats["sigma_s"]), rel=1e-6)
    assert (got["precision"], got["recall"]) == precision_recall(ref["pool"], sam["pool"])


def test_custom_extractor_needs_an_id(tmp_path):
    np.savez(tmp_path / "ref.npz", _images(10, 7))
    with pytest.raises(ValueError, match="extractor_id"):
        evaluate(_images(10, 8), tmp_path / "ref.npz", extractor=FakeExtractor(), cache_dir=tmp_path)


# ----------------------------------------------------------------------------- ADM's rules, restated
# guided-diffusion's evaluations/evaluator.py (the suite behind DiT's and DiG's tables), written out
# again here without calling gladiff: statistics, Frechet distance, Inception Score, precision/recall.
def adm_statistics(acts):
    """Mean and the unbiased (N - 1) covariance of the activations."""
    acts = np.asarray(acts, dtype=np.float64)
    return acts.mean(axis=0), np.cov(acts, rowvar=False)


def adm_frechet(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """|mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrtm(S1 S2); eps on both diagonals if the root is not
    finite; the real part of a complex root."""
    diff = mu1 - mu2
    root = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(root).all():
        offset = np.eye(len(sigma1)) * eps
        root = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    root = np.real(root)
    return diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(root)


def adm_inception_score(logits, split_size=5000):
    """Softmax of the (bias-free) logits; per consecutive split of 5,000: exp of the mean over rows of
    KL(p || the split's mean p); the mean over splits."""
    z = np.asarray(logits, dtype=np.float64)
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    scores = []
    for start in range(0, len(p), split_size):
        part = p[start:start + split_size]
        kl = (part * (np.log(part) - np.log(part.mean(axis=0, keepdims=True)))).sum(axis=1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores))


def adm_precision_recall(ref, sam, k=3):
    """Each set's manifold: balls around its points with the squared distance to the k-th nearest
    other point (the k-th entry of the row's sorted squared distances, the point itself at 0) as the
    radius. Precision: the fraction of samples inside some reference ball; recall: of references
    inside some sample ball. ADM first tries float16 distances; exact ones here (only points within
    float16 rounding of a ball's edge can differ)."""
    def sq(a, b):
        return ((np.asarray(a, np.float64)[:, None, :] - np.asarray(b, np.float64)[None]) ** 2).sum(-1)

    r_ref = np.partition(sq(ref, ref), k, axis=1)[:, k]
    r_sam = np.partition(sq(sam, sam), k, axis=1)[:, k]
    d = sq(ref, sam)
    return float((d <= r_ref[:, None]).any(axis=0).mean()), float((d <= r_sam[None, :]).any(axis=1).mean())


def test_evaluate_gives_the_numbers_of_adms_rules(tmp_path):
    """The whole suite on stand-in features: pool -> FID and precision/recall (reference first),
    spatial -> sFID, logits -> IS; each as ADM's evaluator computes it."""
    ref_images, sample_images = _images(70, 11), _images(60, 12, shift=15)
    np.savez(tmp_path / "ref.npz", ref_images)
    got = evaluate(sample_images, tmp_path / "ref.npz", extractor=FakeExtractor(), extractor_id="fake",
                   cache_dir=tmp_path / "cache", device="cpu", progress=False)
    ref, sam = _features(ref_images), _features(sample_images)
    assert got["fid"] == pytest.approx(adm_frechet(*adm_statistics(sam["pool"]), *adm_statistics(ref["pool"])),
                                       rel=1e-6)
    assert got["sfid"] == pytest.approx(adm_frechet(*adm_statistics(sam["spatial"]),
                                                    *adm_statistics(ref["spatial"])), rel=1e-6)
    assert got["inception_score"] == pytest.approx(adm_inception_score(sam["logits"]), rel=1e-9)
    precision, recall = adm_precision_recall(ref["pool"], sam["pool"])
    assert 0 < precision < 1 and 0 < recall < 1  # neither trivially 0 nor 1: the order matters
    assert got["precision"] == pytest.approx(precision, abs=1.01 / 60)  # at most one boundary point
    assert got["recall"] == pytest.approx(recall, abs=1.01 / 70)


def test_metric_functions_give_the_numbers_of_adms_rules_at_scale():
    """Several splits of 5,000 (the last one short) for IS, 1008 classes; FID on 64-d features with
    correlated covariances; precision/recall of shifted clouds."""
    rng = np.random.default_rng(21)
    logits = rng.normal(scale=2.0, size=(12_000, 1008)) + rng.normal(scale=3.0, size=1008)
    logits[5000:] += rng.normal(scale=2.0, size=1008)  # splits that differ
    assert inception_score(softmax(logits)) == pytest.approx(adm_inception_score(logits), rel=1e-9)
    mix = rng.normal(size=(64, 64)) / 8
    a = rng.normal(size=(500, 64)) @ mix
    b = rng.normal(size=(400, 64)) @ (mix + rng.normal(size=(64, 64)) / 16) + 0.3
    assert frechet_distance(*gaussian_statistics(a), *gaussian_statistics(b)) == pytest.approx(
        adm_frechet(*adm_statistics(a), *adm_statistics(b)), rel=1e-8)
    ref, sam = rng.normal(size=(400, 32)), rng.normal(size=(300, 32))
    sam[:, :2] += 1.5
    expected = adm_precision_recall(ref, sam)
    assert 0.05 < min(expected) and max(expected) < 0.95
    got = precision_recall(ref, sam)
    assert got[0] == pytest.approx(expected[0], abs=1.01 / 300) and got[1] == pytest.approx(expected[1], abs=1.01 / 400)
