import json

import numpy as np
import pytest
import torch

from gladiff.data import LatentDataset, build_dataset, save_latents
from gladiff.data.extract import extract_latents
from gladiff.data.vae import encode, load_vae


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, small_vae_dir):
    """One float32 extraction with flipped copies, shared by the tests below."""
    from data_helpers import write_images

    root = tmp_path_factory.mktemp("lat")
    images = write_images(root / "images", {"b": [(40, 48), (32, 32), (50, 40)],
                                            "a": [(36, 36), (64, 48)]})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see conftest.one_torch_thread (which runs after module fixtures)
    extract_latents(images, root / "out", image_size=32, vae=small_vae_dir, flip=True,
                    shard_size=2, batch_size=2, dtype="float32", device="cpu", progress=False)
    torch.set_num_threads(threads)
    return images, root / "out"


def test_round_trip_item_equals_scaled_encoding(extracted, small_vae_dir):
    images, out = extracted
    ds = build_dataset(f"latents:{out}", 32, random_flip=False, posterior="mean")
    assert (len(ds), ds.num_classes, ds.in_channels, ds.sample_size) == (5, 2, 4, 4)
    assert ds.is_latent and ds.classes == ["a", "b"] and ds.vae == str(small_vae_dir.resolve())
    np.testing.assert_array_equal(ds.labels, [0, 0, 1, 1, 1])
    pixels = build_dataset(f"imagefolder:{images}", 32, random_flip=False)
    vae = load_vae(ds.vae)
    for i in range(len(ds)):
        z, y = ds[i]
        x, y_img = pixels[i]
        assert z.dtype == torch.float32 and z.shape == (4, 4, 4) and y == y_img
        torch.testing.assert_close(z, encode(vae, x[None], sample=False)[0], rtol=1e-4, atol=1e-5)


def test_flip_picks_either_stored_copy(extracted):
    _, out = extracted
    mean = np.load(out / "shard_00001" / "mean.npy")  # items 2 and 3
    plain = LatentDataset(out, random_flip=False, posterior="mean")
    flipping = LatentDataset(out, posterior="mean")
    assert flipping.random_flip and not plain.random_flip
    copies = [torch.from_numpy(0.18215 * mean[1, c]) for c in (0, 1)]
    torch.manual_seed(0)
    draws = [flipping[3][0] for _ in range(60)]
    which = [0 if torch.allclose(d, copies[0], rtol=0, atol=1e-6)
             else 1 if torch.allclose(d, copies[1], rtol=0, atol=1e-6) else -1 for d in draws]
    assert -1 not in which and 15 <= sum(which) <= 45
    assert all(torch.allclose(plain[3][0], copies[0], rtol=0, atol=1e-6) for _ in range(5))


def test_posterior_samples_have_the_stored_mean_and_std(extracted):
    _, out = extracted
    ds = LatentDataset(out, random_flip=False)
    mean = torch.from_numpy(np.load(out / "shard_00000" / "mean.npy")[1, 0]) * 0.18215
    std = torch.from_numpy(np.load(out / "shard_00000" / "std.npy")[1, 0]) * 0.18215
    assert (std > 0).all() and std.min() < 0.5 * std.max()  # a non-trivial, varying std
    torch.manual_seed(0)
    n = 4000
    draws = torch.stack([ds[1][0] for _ in range(n)])
    # 64 elements, each checked at 5 standard errors: a false failure is ~1e-5 likely.
    assert ((draws.mean(0) - mean).abs() < 5 * std / n ** 0.5).all()
    assert ((draws.std(0) / std - 1).abs() < 5 * (0.5 / n) ** 0.5).all()


def test_dataloader_workers_read_memory_maps(extracted):
    _, out = extracted
    ds = LatentDataset(out, random_flip=False, posterior="mean")
    ds[0]  # open a memory map in this process first: it must not be pickled to the workers
    loader = torch.utils.data.DataLoader(ds, batch_size=5, num_workers=1)
    z, y = next(iter(loader))
    torch.testing.assert_close(z, torch.stack([ds[i][0] for i in range(5)]))
    np.testing.assert_array_equal(y.numpy(), ds.labels)


def test_latents_errors(extracted, tmp_path):
    _, out = extracted
    with pytest.raises(ValueError, match="extracted at image_size 32, not 256"):
        build_dataset(f"latents:{out}", 256)
    with pytest.raises(ValueError, match="manifest.json not found"):
        build_dataset(f"latents:{tmp_path}", 32)
    with pytest.raises(ValueError, match="posterior"):
        LatentDataset(out, posterior="mode")
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not a gladiff-latents manifest"):
        LatentDataset(tmp_path)
    with pytest.raises(IndexError):
        LatentDataset(out)[5]


def test_float16_storage_and_real_sd_architecture(tmp_path, sd_vae_dir):
    """The real SD VAE architecture end to end at 32 px, stored as float16."""
    from data_helpers import write_images

    images = write_images(tmp_path / "images", {"x": [(40, 32), (32, 48)], "y": [(33, 33)]})
    m = extract_latents(images, tmp_path / "out", image_size=32, vae=sd_vae_dir, device="cpu",
                        progress=False)
    assert m["dtype"] == "float16" and m["latent_shape"] == [4, 4, 4] and m["num_latents"] == 3
    stored = np.load(tmp_path / "out" / "shard_00000" / "mean.npy")
    assert stored.dtype == np.float16 and stored.shape == (3, 1, 4, 4, 4)
    ds = build_dataset(f"latents:{tmp_path / 'out'}", posterior="mean")
    assert not ds.random_flip  # no stored copies: nothing to flip
    pixels = build_dataset(f"imagefolder:{images}", 32, random_flip=False)
    vae = load_vae(sd_vae_dir)
    for i in range(3):
        torch.testing.assert_close(ds[i][0], torch.from_numpy(stored[i, 0].astype(np.float32)) * 0.18215)
        ref = encode(vae, pixels[i][0][None], sample=False)[0]
        # float16 storage keeps ~3 significant digits.
        torch.testing.assert_close(ds[i][0], ref, rtol=2e-3, atol=2e-3)


def test_save_latents_from_arrays(tmp_path):
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(7, 4, 2, 2)).astype(np.float32)
    labels = rng.integers(0, 3, 7)
    m = save_latents(tmp_path / "out", mean, labels, classes=["a", "b", "c"], image_size=16,
                     vae="none", shard_size=3)
    assert m["complete"] and [s["count"] for s in m["shards"]] == [3, 3, 1] and not m["flip"]
    ds = build_dataset(f"latents:{tmp_path / 'out'}", 16)  # std 0: samples equal the mean
    assert (len(ds), ds.in_channels, ds.sample_size, ds.num_classes) == (7, 4, 2, 3)
    for i in range(7):
        z, y = ds[i]
        torch.testing.assert_close(z, torch.from_numpy(mean[i]) * 0.18215)
        assert y == labels[i]
    with pytest.raises(ValueError, match="already holds"):
        save_latents(tmp_path / "out", mean, labels, classes=["a", "b", "c"], image_size=16, vae="none")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        save_latents(tmp_path / "o2", mean, labels, classes=["a", "b"], image_size=16, vae="none")
    with pytest.raises(ValueError, match="mean must be"):
        save_latents(tmp_path / "o3", mean[:, :, 0], labels, classes=["a"] * 3, image_size=16, vae="none")


@pytest.mark.parametrize("bad", [3, -1])
def test_labels_outside_the_classes_are_refused(tmp_path, bad):
    """Label 3 of 3 classes is the model's null (guidance) class: training would silently learn
    those latents as unconditional. The folder is refused, naming the shard."""
    rng = np.random.default_rng(0)
    save_latents(tmp_path / "out", rng.normal(size=(7, 4, 2, 2)).astype(np.float32), np.arange(7) % 3,
                 classes=["a", "b", "c"], image_size=16, vae="none", shard_size=3)
    labels = np.load(tmp_path / "out" / "shard_00001" / "labels.npy")
    labels[1] = bad
    np.save(tmp_path / "out" / "shard_00001" / "labels.npy", labels)
    with pytest.raises(ValueError, match=rf"shard_00001 .* labels in \[{min(bad, 0)}, {max(bad, 2)}\].* 3 classes"):
        build_dataset(f"latents:{tmp_path / 'out'}", 16)
