"""``--data`` specs and the one constructor the pipelines call: ``build_dataset(spec, image_size)``.

Specs: ``digits`` (the built-in default), ``glyphs`` (built-in letters and digits rendered on the fly),
``imagefolder:PATH`` (ImageNet-style class folders), ``latents:PATH`` (a folder written by
``gladiff extract-latents``).
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from gladiff.data.base import ClassDataset

KINDS = ("digits", "glyphs", "imagefolder", "latents")
BUILT_IN = ("digits", "glyphs")  # kinds that take no path


class DataSpec(NamedTuple):
    kind: str  # one of KINDS
    path: Path | None  # None for the built-in data


def parse_data_spec(spec: str) -> DataSpec:
    """``"digits" | "glyphs" | "imagefolder:PATH" | "latents:PATH"`` -> ``DataSpec(kind, path)``.

    Only the first ``:`` separates kind from path, so paths may contain colons. Raises ValueError
    for an unknown kind, a missing path, or a path given to ``digits`` or ``glyphs``.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"data spec must be a non-empty string like 'digits' or "
                         f"'imagefolder:PATH', got {spec!r}")
    kind, sep, path = spec.strip().partition(":")
    if kind not in KINDS:
        raise ValueError(f"unknown data kind {kind!r} in {spec!r}; expected one of "
                         "'digits', 'glyphs', 'imagefolder:PATH', 'latents:PATH'")
    if kind in BUILT_IN:
        if sep:
            raise ValueError(f"{kind!r} takes no path, got {spec!r}")
        return DataSpec(kind, None)
    if not path:
        raise ValueError(f"{kind!r} needs a path: '{kind}:PATH', got {spec!r}")
    return DataSpec(kind, Path(path).expanduser())


def build_dataset(spec: str | DataSpec, image_size: int | None = None, *,
                  random_flip: bool | None = None, **kwargs) -> ClassDataset:
    """The dataset a spec names, ready for a DataLoader (items ``(x float32 [C, S, S], y int)``).

    ``image_size`` is the pixel resolution (digits default 16; glyphs default 64, a multiple of 16;
    latents default to the extraction's and must match it if given; required for imagefolder).
    ``random_flip=None`` means the data's default: off for digits and glyphs (a mirrored character is
    another character or none), on for imagefolder and for latents with stored flipped copies. Extra keyword arguments go to the dataset class (e.g.
    ``posterior="mean"`` for latents).
    """
    from gladiff.data.digits import DEFAULT_IMAGE_SIZE, DigitsDataset
    from gladiff.data.glyphs import DEFAULT_IMAGE_SIZE as GLYPHS_IMAGE_SIZE, GlyphsDataset
    from gladiff.data.imagefolder import ImageFolderDataset
    from gladiff.data.latents import LatentDataset

    s = spec if isinstance(spec, DataSpec) else parse_data_spec(spec)
    if s.kind == "digits":
        return DigitsDataset(image_size or DEFAULT_IMAGE_SIZE,
                             random_flip=bool(random_flip), **kwargs)
    if s.kind == "glyphs":
        return GlyphsDataset(image_size or GLYPHS_IMAGE_SIZE, random_flip=bool(random_flip), **kwargs)
    if s.kind == "imagefolder":
        if image_size is None:
            raise ValueError("imagefolder data needs an image_size (the centre-crop resolution)")
        return ImageFolderDataset(s.path, image_size,
                                  random_flip=True if random_flip is None else random_flip, **kwargs)
    return LatentDataset(s.path, image_size,
                         random_flip=True if random_flip is None else random_flip, **kwargs)
