"""The ADM suite's plumbing: batch files and folders, reference caching, metric assembly.

A cheap stand-in replaces Inception (its maths is tested in test_inception.py); the metrics must
equal the direct computations on the stand-in's features.
"""
import numpy as np
import pytest
from PIL import Image

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
