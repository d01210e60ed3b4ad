"""The built-in glyphs: items, determinism by (seed, index), resolution, classes and fonts."""
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gladiff.data import DataSpec, build_dataset, parse_data_spec
from gladiff.data.glyphs import (CLASSES, FONT_FILES, NUM_CLASSES, GlyphsDataset, _font, font_dir,
                                 glyphs_arrays, render_glyph)


def test_items_shapes_range_labels():
    ds = build_dataset("glyphs", 32)
    assert isinstance(ds, GlyphsDataset)
    assert (ds.num_classes, ds.in_channels, ds.sample_size, ds.image_size) == (NUM_CLASSES, 3, 32, 32)
    assert len(ds) == 1_000_000 and ds.classes == list(CLASSES)
    assert not ds.is_latent and not ds.random_flip and ds.reads_from_disk
    xs = torch.stack([ds[i][0] for i in range(2 * NUM_CLASSES)])
    ys = [ds[i][1] for i in range(2 * NUM_CLASSES)]
    assert xs.dtype == torch.float32 and xs.shape == (2 * NUM_CLASSES, 3, 32, 32)
    assert -1 <= xs.min() < -0.5 and 0.5 < xs.max() <= 1  # dark and light pixels, within [-1, 1]
    assert ys == list(range(NUM_CLASSES)) * 2 and list(ds.labels[:len(ys)]) == ys
    images, labels = glyphs_arrays(2 * NUM_CLASSES, 32, seed=0)
    torch.testing.assert_close(xs, torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1,
                               rtol=0, atol=1e-6)
    np.testing.assert_array_equal(labels, ys)


def test_sample_is_a_function_of_seed_and_index():
    ds = GlyphsDataset(32, seed=5)
    first = ds[123][0]
    # Rendering others in between, in another order, or in a copy (a DataLoader worker) changes nothing.
    _ = [ds[i] for i in (7, 900_000, 122, 124)]
    assert torch.equal(ds[123][0], first)
    assert torch.equal(pickle.loads(pickle.dumps(ds))[123][0], first)
    assert np.array_equal(render_glyph(5, 123, 32), render_glyph(5, 123, 32))
    # Another seed, or another index of the same class, is another image.
    assert not torch.equal(GlyphsDataset(32, seed=6)[123][0], first)
    assert not torch.equal(ds[123 + NUM_CLASSES][0], first)
    a, _ = glyphs_arrays(50, 32, seed=0)
    b, _ = glyphs_arrays(50, 32, seed=1)
    assert (np.abs(a.astype(int) - b).mean(axis=(1, 2, 3)) > 10).all()
    # glyphs_arrays with an offset is the same images.
    c, _ = glyphs_arrays(10, 32, seed=0, start=40)
    assert np.array_equal(c, a[40:50])


def test_a_render_shows_the_same_scene_at_every_resolution():
    """Every length is a fraction of the image: a 128 px render shrunk to 32 px is the 32 px render,
    up to font hinting and rounding; unrelated renders differ ~15x more."""
    small, _ = glyphs_arrays(60, 32, seed=0)
    large, _ = glyphs_arrays(60, 128, seed=0)
    shrunk = F.interpolate(torch.from_numpy(large).permute(0, 3, 1, 2).float(), size=(32, 32), mode="bilinear",
                           antialias=True).permute(0, 2, 3, 1).numpy()
    same = np.abs(small - shrunk).mean()
    other = np.abs(small - np.roll(shrunk, 1, axis=0)).mean()
    assert same < 10 and other > 6 * same


@pytest.mark.parametrize("size", [16, 48, 64, 128])
def test_other_sizes(size):
    ds = build_dataset("glyphs", size)
    assert ds.sample_size == size and ds[3][0].shape == (3, size, size)


@pytest.mark.parametrize("size", [0, 8, 24, 33, 100])
def test_sizes_that_are_not_multiples_of_16_are_refused(size):
    with pytest.raises(ValueError, match="multiple of 16"):
        GlyphsDataset(size)


def test_default_size_and_flip():
    assert build_dataset("glyphs").image_size == 64
    ds = build_dataset("glyphs", 32, random_flip=True)
    base = GlyphsDataset(32)[3][0]
    torch.manual_seed(0)
    seen = [torch.equal(ds[3][0], base.flip(-1)) for _ in range(40)]
    assert 5 < sum(seen) < 35


def test_spec():
    assert parse_data_spec("glyphs") == DataSpec("glyphs", None)
    with pytest.raises(ValueError, match="takes no path"):
        parse_data_spec("glyphs:/x")


def test_every_font_draws_every_class_as_that_character():
    """Each of the 21 fonts maps each class to the glyph of that character (by its glyph name, read
    with fontTools, which matplotlib depends on: a symbol face maps 'a' to 'turnstileright', cmmi10
    maps '1' to 'oneoldstyle', LastResort everything to 'lastresortlatin'), and draws it: ink, and no
    two classes alike."""
    from fontTools.ttLib import TTFont

    digit_names = "one two three four five six seven eight nine".split()
    expected = [digit_names[int(c) - 1] if c.isdigit() else c for c in CLASSES]
    for font, name in enumerate(FONT_FILES):
        cmap = TTFont(str(font_dir() / name), lazy=True).getBestCmap()
        assert [cmap.get(ord(c)) for c in CLASSES] == expected, name
        masks = []
        for char in CLASSES:
            m = _font(font, 24).getmask(char, mode="L")
            a = np.asarray(m, dtype=np.uint8).reshape(m.size[1], m.size[0])
            assert a.max() > 128, (name, char)
            masks.append(a.tobytes() + bytes(m.size))
        assert len(set(masks)) == NUM_CLASSES, name


def test_renders_vary_in_font_colour_and_background():
    images, _ = glyphs_arrays(4 * NUM_CLASSES, 32, seed=0)
    x = images.astype(float)
    corners = x[:, [0, 0, -1, -1], [0, -1, 0, -1]]  # [N, 4, 3]: background pixels, mostly
    assert corners.mean(axis=(1, 2)).std() > 50  # light and dark backgrounds
    assert np.abs(x[:, :, :, 0] - x[:, :, :, 2]).mean() > 10  # colour, not grey
    # A background is not flat: gradients and textures.
    assert np.median(corners.std(axis=1).mean(axis=1)) > 3
