import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from data_helpers import corrupt_files, write_images
from PIL import Image

from gladiff.data import ImageFolderDataset, UnreadableImageWarning, build_dataset, center_crop_arr


def reference_center_crop(arr: np.ndarray, size: int) -> np.ndarray:
    """ADM's crop computed independently with torch: exact 2x2 means for the box halvings and
    torch's antialiased bicubic (PIL's a = -0.5 kernel) for the resize, each 1-D pass rounded to
    uint8 as PIL's separable resampler does. Valid when every halving sees even sides."""
    def to_u8(x):
        return torch.floor(x + 0.5).clamp(0, 255)

    x = torch.from_numpy(arr).permute(2, 0, 1)[None].double()
    while min(x.shape[-2:]) >= 2 * size:
        h, w = x.shape[-2:]
        assert h % 2 == 0 and w % 2 == 0
        x = to_u8((x[..., :, 0::2] + x[..., :, 1::2]) / 2)  # horizontal pass first, like PIL
        x = to_u8((x[..., 0::2, :] + x[..., 1::2, :]) / 2)
    h, w = x.shape[-2:]
    nh, nw = round(h * size / min(h, w)), round(w * size / min(h, w))
    if nw != w:
        x = to_u8(F.interpolate(x, size=(h, nw), mode="bicubic", antialias=True, align_corners=False))
    if nh != h:
        x = to_u8(F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False))
    top, left = (nh - size) // 2, (nw - size) // 2
    return x[0, :, top:top + size, left:left + size].permute(1, 2, 0).numpy()


@pytest.mark.parametrize("h,w,size", [
    (72, 100, 16),   # two halvings, then a downscale, crop columns
    (100, 72, 16),   # portrait: crop rows
    (64, 64, 16),    # halvings only
    (10, 13, 16),    # smaller than the target: bicubic upscale
    (20, 37, 16),    # upscale with odd width
    (48, 52, 16),    # one halving then bicubic
    (96, 160, 24),
    (16, 16, 16),    # identity
])
def test_center_crop_matches_independent_reference(h, w, size):
    arr = np.random.default_rng(h * 1000 + w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    got = center_crop_arr(Image.fromarray(arr), size)
    ref = reference_center_crop(arr, size)
    assert got.shape == (size, size, 3) and got.dtype == np.uint8
    diff = np.abs(got.astype(np.float64) - ref)
    # PIL's fixed-point weights differ from float64 in the last bit on a handful of pixels; a
    # crop shifted by one pixel differs by ~20 on average for these noise images.
    assert diff.max() <= 1 and diff.mean() < 0.01


def test_labels_from_sorted_folder_names(tmp_path):
    root = write_images(tmp_path, {"zebra": [(20, 20)] * 2, "ant": [(20, 20)] * 3, "moose": [(20, 20)]})
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    (tmp_path / "ant" / ".hidden.png").write_bytes(b"")
    (tmp_path / "moose" / "nested").mkdir()
    Image.new("RGB", (20, 20)).save(tmp_path / "moose" / "nested" / "deep.JPG")
    ds = build_dataset(f"imagefolder:{root}", 16)
    assert ds.classes == ["ant", "moose", "zebra"] and ds.num_classes == 3
    assert (ds.in_channels, ds.sample_size, ds.is_latent, ds.random_flip) == (3, 16, False, True)
    assert len(ds) == 7  # the .txt and the hidden file are not images
    for i in range(len(ds)):
        assert ds.path(i).relative_to(root).parts[0] == ds.classes[ds.labels[i]]
    np.testing.assert_array_equal(ds.labels, [0, 0, 0, 1, 1, 2, 2])


def test_items_are_centre_crops_in_model_range(tiny_folder):
    ds = ImageFolderDataset(tiny_folder, 16, random_flip=False)
    for i in range(len(ds)):
        x, y = ds[i]
        arr = np.asarray(Image.open(ds.path(i)).convert("RGB"))
        ref = torch.tensor(center_crop_arr(Image.fromarray(arr), 16)).permute(2, 0, 1).float()
        assert x.dtype == torch.float32 and x.shape == (3, 16, 16)
        torch.testing.assert_close(x, ref / 127.5 - 1, rtol=0, atol=1e-6)
        assert y == ds.labels[i]
        assert -1 <= x.min() and x.max() <= 1


def test_grayscale_and_rgba_become_rgb(tmp_path):
    (tmp_path / "a").mkdir()
    Image.new("L", (20, 24), 200).save(tmp_path / "a" / "gray.png")
    Image.new("RGBA", (24, 20), (10, 20, 30, 40)).save(tmp_path / "a" / "rgba.png")
    ds = ImageFolderDataset(tmp_path, 16, random_flip=False)
    torch.testing.assert_close(ds[0][0], torch.full((3, 16, 16), 200 / 127.5 - 1))
    torch.testing.assert_close(ds[1][0][:, 0, 0], torch.tensor([10, 20, 30]) / 127.5 - 1)


def test_random_flip(tiny_folder):
    plain = ImageFolderDataset(tiny_folder, 16, random_flip=False)
    flipping = ImageFolderDataset(tiny_folder, 16)
    base = plain[1][0]
    torch.manual_seed(0)
    draws = [flipping[1][0] for _ in range(60)]
    mirrored = [torch.equal(d, base.flip(-1)) for d in draws]
    assert all(m or torch.equal(d, base) for m, d in zip(mirrored, draws))
    assert 15 <= sum(mirrored) <= 45  # p = 1/2 (binomial(60, 1/2) is outside this 1e-4 of the time)
    assert not torch.equal(base, base.flip(-1))
    torch.manual_seed(0)
    assert all(torch.equal(plain[1][0], base) for _ in range(10))


def test_corrupt_files_skipped_with_count_and_one_warning(tiny_folder):
    bad = corrupt_files(tiny_folder / "cat")
    ds = ImageFolderDataset(tiny_folder, 16, random_flip=False)
    assert len(ds) == 13  # listed: construction opens nothing
    bad_idx = [i for i in range(len(ds)) if ds.path(i) in bad]
    assert len(bad_idx) == 2
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = [ds[i] for i in range(len(ds))]
    ours = [w for w in caught if issubclass(w.category, UnreadableImageWarning)]
    assert len(ours) == 1 and "zz_garbage.jpg" in str(ours[0].message)
    assert ds.num_skipped == 2
    # A bad index yields the next readable file (cat's two bad files are last in "cat", so "dog" 0).
    nxt = bad_idx[-1] + 1
    for i in bad_idx:
        assert torch.equal(items[i][0], items[nxt][0]) and items[i][1] == items[nxt][1] == 2
    # Met again: no new warning, the count does not grow.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds[bad_idx[0]]
    assert not caught and ds.num_skipped == 2


def test_all_unreadable_is_a_clear_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").write_bytes(b"junk")
    ds = ImageFolderDataset(tmp_path, 16)
    with pytest.warns(UnreadableImageWarning), pytest.raises(ValueError, match="none of the 1 images"):
        ds[0]


def test_missing_and_empty_folders_are_value_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nope", 16)
    with pytest.raises(ValueError, match="no class sub-folders"):
        ImageFolderDataset(tmp_path, 16)
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match="no image files"):
        ImageFolderDataset(tmp_path, 16)
    with pytest.raises(ValueError, match="not a directory"):
        ImageFolderDataset(tmp_path / "cls" / "readme.txt", 16)
    with pytest.raises(ValueError, match="image_size"):
        ImageFolderDataset(tmp_path, 0)


def test_empty_class_keeps_its_label_with_a_warning(tmp_path):
    write_images(tmp_path, {"a": [(20, 20)], "c": [(20, 20)]})
    (tmp_path / "b").mkdir()
    with pytest.warns(UserWarning, match="hold no images"):
        ds = ImageFolderDataset(tmp_path, 16)
    assert ds.classes == ["a", "b", "c"]
    np.testing.assert_array_equal(ds.labels, [0, 2])
