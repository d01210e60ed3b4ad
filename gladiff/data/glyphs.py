"""The built-in glyphs: letters and digits rendered on the fly from the fonts that ship with matplotlib.

Each image is one character in a random font (21 TrueType faces of DejaVu Sans / Sans Mono / Serif,
STIX and Computer Modern, in their regular, bold, italic and bold-italic styles), at a random size
(its longest ink side 50-80% of the image), rotated by up to 15 degrees either way, placed at a random
position wholly inside the frame, in a random stroke colour on a random background (a linear or
radial gradient between two colours, with smooth noise or stripes over it, or neither), RGB, at any
multiple of 16 pixels. Every length is a fraction of the image size, so a render at 128 px shows
the same scene as one at 32 px with finer detail.

Sample ``i`` of seed ``s`` is a pure function of ``(s, i, image_size)``: its random numbers come from
``numpy.random.default_rng((s, i))`` and nothing else, so the data order, DataLoader workers and a
resumed run see exactly the same images. Its label is ``i % len(CLASSES)``.

The classes are the 49 characters of ``CLASSES``. Once size is random, lower and upper case of
the same shape are one glyph (``c/C``, ``k/K``, ``o/O``, ``p/P``, ``s/S``, ``u/U``, ``v/V``, ``w/W``,
``x/X``, ``z/Z``), and so are ``0/O`` and ``1/I/l``: of each group one character is kept, so that every
class has one appearance (docs/data.md).
Nothing is downloaded: matplotlib (a runtime dependency) ships the fonts.
"""
from __future__ import annotations

import colorsys
import functools
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFont

from gladiff.data.base import ClassDataset
from gladiff.data.transforms import random_hflip, to_model_range

# One representative per group of characters that look alike once size and case are random
# (docs/data.md gives the groups). Index = label.
CLASSES = tuple("123456789" "ABCDEFGHJKLMNOPQRSTUVWXYZ" "abdefghijmnqrty")
FONT_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmb10.ttf", "cmti10.ttf", "cmss10.ttf", "cmtt10.ttf",
)
NUM_CLASSES = len(CLASSES)
DEFAULT_IMAGE_SIZE = 64
DEFAULT_LENGTH = 1_000_000  # distinct images per epoch of the training set
# Bump when a render changes (parameters, their ranges or the order they are drawn in): it keys the
# glyph check's reference statistics and names the data a classifier was trained on.
RENDER_VERSION = "glyphs-v1"

_REF_SIZE = 64  # font size at which each glyph's ink box is measured
MAX_ANGLE = 15.0  # degrees: more would turn 6 towards 9, b towards q


def font_dir() -> Path:
    """matplotlib's TrueType folder (``matplotlib.get_data_path()/fonts/ttf``)."""
    try:
        import matplotlib
    except ImportError as err:  # a runtime dependency; only a broken install lacks it
        raise ImportError("the glyphs data renders matplotlib's fonts: pip install matplotlib") from err
    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


@functools.lru_cache(maxsize=2048)
def _font(font: int, size: int) -> ImageFont.FreeTypeFont:
    # One FreeType face per (font, pixel size), kept: a render at 128 px uses about 200 sizes.
    return ImageFont.truetype(str(font_dir() / FONT_FILES[font]), size)


@functools.lru_cache(maxsize=None)
def _ink_extent(font: int, char: str) -> int:
    """Longest side of the character's ink box at font size ``_REF_SIZE``."""
    box = _font(font, _REF_SIZE).getmask(char, mode="L").getbbox()
    if box is None:
        raise ValueError(f"{FONT_FILES[font]} has no ink for {char!r}")
    return max(box[2] - box[0], box[3] - box[1])


def _glyph_mask(font: int, char: str, extent: float) -> Image.Image:
    """The character's coverage (mode L), cropped to its ink, its longest side about ``extent`` px."""
    size = max(4, round(_REF_SIZE * extent / _ink_extent(font, char)))
    mask = _font(font, size).getmask(char, mode="L")
    im = Image.frombytes("L", mask.size, bytes(mask))
    return im.crop(im.getbbox())


def _colour(rng: np.random.Generator, value_range: tuple[float, float], max_saturation: float) -> np.ndarray:
    h, s, v = rng.uniform(0, 1), rng.uniform(0, max_saturation), rng.uniform(*value_range)
    return np.array(colorsys.hsv_to_rgb(h, s, v), dtype=np.float32)


def _background(rng: np.random.Generator, size: int, light: bool) -> np.ndarray:
    """``float32 [size, size, 3]`` in [0, 1]: a gradient between two colours of the background's
    brightness band, and over it smooth noise, stripes or nothing."""
    band = (0.65, 1.0) if light else (0.0, 0.35)
    c1, c2 = _colour(rng, band, 0.8), _colour(rng, band, 0.8)
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size  # pixel centres in (0, 1)
    y, x = coords[:, None], coords[None, :]
    if rng.uniform() < 0.5:  # linear gradient in a random direction
        theta = rng.uniform(0, 2 * np.pi)
        t = (x - 0.5) * np.cos(theta) + (y - 0.5) * np.sin(theta) + 0.5
    else:  # radial gradient from a random centre
        cx, cy, radius = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.5, 1.2)
        t = np.sqrt((x - cx) ** 2 + (y - cy) ** 2) / radius
    t = np.clip(t, 0, 1)[..., None]
    bg = c1 * (1 - t) + c2 * t
    texture = rng.integers(3)
    amplitude = rng.uniform(0.04, 0.12)
    if texture == 0:  # smooth value noise: a coarse random grid, upsampled bicubically
        cells = int(rng.integers(3, 9))
        grid = rng.uniform(-1, 1, (cells, cells)).astype(np.float32)
        noise = np.asarray(Image.fromarray(grid).resize((size, size), Image.BICUBIC))  # mode F
        bg = bg + amplitude * noise[..., None]
    elif texture == 1:  # stripes: a sinusoid of 2-8 periods across the image in a random direction
        phi, freq, phase = rng.uniform(0, np.pi), rng.uniform(2, 8), rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * freq * (x * np.cos(phi) + y * np.sin(phi)) + phase)
        bg = bg + amplitude * wave[..., None]
    return np.clip(bg, 0, 1)


def render_glyph(seed: int, index: int, image_size: int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """Image ``index`` of the glyphs of ``seed``: ``uint8 [image_size, image_size, 3]``.

    Its class is ``glyph_label(index)``; everything else is drawn from ``default_rng((seed, index))``.
    """
    check_image_size(image_size)
    rng = np.random.default_rng((int(seed), int(index)))
    char = CLASSES[glyph_label(index)]
    font = int(rng.integers(len(FONT_FILES)))
    extent = rng.uniform(0.5, 0.8) * image_size
    angle = rng.uniform(-MAX_ANGLE, MAX_ANGLE)
    light = bool(rng.uniform() < 0.5)  # dark ink on a light background, or light on dark
    ink = _colour(rng, (0.0, 0.3) if light else (0.7, 1.0), 1.0)
    bg = _background(rng, image_size, light)

    mask = _glyph_mask(font, char, extent).rotate(angle, resample=Image.BICUBIC, expand=True)
    mask = mask.crop(mask.getbbox())
    w, h = mask.size
    if max(w, h) > image_size:  # only at tiny sizes, where font sizes round coarsely
        scale = image_size / max(w, h)
        mask = mask.resize((max(1, int(w * scale)), max(1, int(h * scale))), Image.BILINEAR)
        w, h = mask.size
    left, top = int(rng.integers(image_size - w + 1)), int(rng.integers(image_size - h + 1))
    alpha = np.zeros((image_size, image_size, 1), np.float32)
    alpha[top:top + h, left:left + w, 0] = np.asarray(mask, dtype=np.float32) / 255
    out = bg * (1 - alpha) + ink * alpha
    return (out * 255 + 0.5).astype(np.uint8)


def glyph_label(index: int) -> int:
    """The class of image ``index`` (``index % NUM_CLASSES``, so any run of 40 images holds each once)."""
    return int(index) % NUM_CLASSES


def check_image_size(image_size: int) -> int:
    """``image_size`` if it is a positive multiple of 16, else ``ValueError``."""
    if not isinstance(image_size, (int, np.integer)) or image_size < 16 or image_size % 16:
        raise ValueError(f"glyphs are rendered at a multiple of 16 pixels (32, 64, 128...), got {image_size!r}")
    return int(image_size)


def glyphs_arrays(n: int, image_size: int = DEFAULT_IMAGE_SIZE, seed: int = 0,
                  start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Images ``start .. start + n - 1`` of ``seed``: ``uint8 [n, S, S, 3]`` and ``int64 [n]`` labels."""
    images = np.empty((n, image_size, image_size, 3), np.uint8)
    for k in range(n):
        images[k] = render_glyph(seed, start + k, image_size)
    labels = (np.arange(start, start + n, dtype=np.int64) % NUM_CLASSES)
    return images, labels


class GlyphsDataset(ClassDataset):
    """The glyphs as a class-conditional dataset of ``float32 [3, S, S]`` images in [-1, 1].

    ``length`` images (default 1,000,000), each rendered when it is read: about 0.6 ms at 64 px and
    1.6 ms at 128 px on one core of the 2-core development machine (docs/data.md). Random flips are off by default, as for the digits: a mirrored glyph is another
    glyph or none.
    """

    # Rendering costs CPU time per item, as reading a file does: `--num-workers auto` gives a GPU
    # run loader workers for it.
    reads_from_disk = True

    def __init__(self, image_size: int = DEFAULT_IMAGE_SIZE, *, seed: int = 0, length: int = DEFAULT_LENGTH,
                 random_flip: bool = False):
        self.image_size = self.sample_size = check_image_size(image_size)
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        self.seed = int(seed)
        self.labels = np.arange(length, dtype=np.int64) % NUM_CLASSES
        self.classes = list(CLASSES)
        self.in_channels = 3
        self.random_flip = bool(random_flip)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        if not 0 <= i < len(self.labels):
            raise IndexError(f"index {i} out of range for {len(self.labels)} glyphs")
        x = random_hflip(to_model_range(render_glyph(self.seed, i, self.image_size)), self.random_flip)
        return x, glyph_label(i)
