import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from gladiff.data import DataSpec, build_dataset, digits_arrays, parse_data_spec


def test_digits_items_shapes_range_labels():
    ds = build_dataset("digits")
    assert (len(ds), ds.num_classes, ds.in_channels, ds.sample_size, ds.image_size) == (1797, 10, 1, 16, 16)
    assert not ds.is_latent and not ds.random_flip
    xs = torch.stack([ds[i][0] for i in range(len(ds))])
    ys = np.array([ds[i][1] for i in range(len(ds))])
    assert xs.dtype == torch.float32 and xs.shape == (1797, 1, 16, 16)
    assert xs.min() == -1 and xs.max() == 1  # the full [-1, 1] range is used, not exceeded
    np.testing.assert_array_equal(ys, load_digits().target)
    np.testing.assert_array_equal(ds.labels, load_digits().target)
    images, _ = digits_arrays(16)
    torch.testing.assert_close(xs[:, 0], torch.from_numpy(images).float() / 127.5 - 1, rtol=0, atol=1e-6)
    # Background pixels (0 in sklearn's 0..16 scale) map to -1.
    assert (xs[0, 0][torch.from_numpy(images[0]) == 0] == -1).all()


@pytest.mark.parametrize("size", [8, 24])
def test_digits_other_sizes(size):
    ds = build_dataset("digits", size)
    assert ds.sample_size == size and ds[5][0].shape == (1, size, size)


def test_digits_flip_off_by_default_and_on_when_asked():
    ds = build_dataset("digits")
    torch.manual_seed(0)
    assert all(torch.equal(ds[3][0], ds[3][0]) for _ in range(10))
    flipping = build_dataset("digits", random_flip=True)
    base = ds[3][0]
    torch.manual_seed(0)
    seen = [torch.equal(flipping[3][0], base.flip(-1)) for _ in range(40)]
    assert 5 < sum(seen) < 35  # both orientations occur


@pytest.mark.parametrize("spec,expected", [
    ("digits", DataSpec("digits", None)),
    ("imagefolder:/data/imagenet/train", DataSpec("imagefolder", "/data/imagenet/train")),
    ("latents:rel/dir:with:colons", DataSpec("latents", "rel/dir:with:colons")),
])
def test_parse_data_spec(spec, expected):
    got = parse_data_spec(spec)
    assert got.kind == expected.kind
    assert (got.path is None) if expected.path is None else (str(got.path) == expected.path)


@pytest.mark.parametrize("spec,match", [
    ("", "non-empty"), ("mnist", "unknown data kind"), ("imagefolder", "needs a path"),
    ("latents:", "needs a path"), ("digits:/x", "takes no path"),
])
def test_parse_data_spec_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_data_spec(spec)


def test_imagefolder_needs_image_size(tmp_path):
    with pytest.raises(ValueError, match="image_size"):
        build_dataset(f"imagefolder:{tmp_path}")
