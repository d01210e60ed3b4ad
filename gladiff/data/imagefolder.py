"""ImageNet-style class folders: ``ROOT/<class name>/**/<image>``, labels = index in sorted class names.

Built for ImageNet's 1.28M files: construction only lists the folders (no image is opened), and the
file list is kept as one numpy byte-string array rather than a Python list, so DataLoader workers
forked from the main process share it instead of copying it page by page as refcounts change.

Unreadable or corrupt files are found when first loaded: the dataset warns once, counts the file in
``num_skipped`` and deterministically substitutes the next readable index, so training never
crashes on a bad JPEG.
"""
from __future__ import annotations

import numbers
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gladiff.data.base import ClassDataset
from gladiff.data.transforms import center_crop_arr, random_hflip, to_model_range

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp", ".gif")


class UnreadableImageWarning(UserWarning):
    """An image file could not be decoded and was skipped."""


def scan_image_folder(root: str | os.PathLike) -> tuple[list[str], np.ndarray, np.ndarray]:
    """List an ImageNet-style folder without opening any image.

    Returns ``(classes, files, labels)``: class names (sorted folder names; label = index),
    ``files`` a byte-string array ``[N]`` of paths relative to ``root`` (sorted by class, then by path),
    ``labels`` int64 ``[N]``. Hidden files/folders and files without an image extension are ignored.
    Raises ValueError when ``root`` is missing, not a folder, has no class folders or no images.
    """
    root = Path(root)
    if not root.exists():
        raise ValueError(f"image folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise ValueError(f"image folder {str(root)!r} is not a directory")
    with os.scandir(root) as it:
        classes = sorted(e.name for e in it if e.is_dir() and not e.name.startswith("."))
    if not classes:
        raise ValueError(f"image folder {str(root)!r} has no class sub-folders "
                         "(expected ROOT/<class name>/<image files>)")
    files: list[bytes] = []
    labels: list[int] = []
    empty = []
    for label, name in enumerate(classes):
        n_before = len(files)
        for dirpath, dirnames, filenames in os.walk(root / name, followlinks=True):
            # Sorting in place makes os.walk's descent order, hence the file order, deterministic.
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            rel = os.path.relpath(dirpath, root)
            for f in sorted(filenames):
                if not f.startswith(".") and f.lower().endswith(IMG_EXTENSIONS):
                    files.append(os.fsencode(os.path.join(rel, f)))
        labels.extend([label] * (len(files) - n_before))
        if len(files) == n_before:
            empty.append(name)
    if not files:
        raise ValueError(f"image folder {str(root)!r} has class folders but no image files "
                         f"(extensions {', '.join(IMG_EXTENSIONS)})")
    if empty:
        warnings.warn(f"{len(empty)} class folder(s) in {str(root)!r} hold no images "
                      f"(e.g. {empty[0]!r}); they keep their label index but never appear",
                      stacklevel=2)
    return classes, np.array(files), np.array(labels, dtype=np.int64)


def warn_unreadable(path, err: str) -> None:
    """The one warning a run gives for unreadable files (later ones are only counted)."""
    warnings.warn(f"skipping unreadable image {str(path)!r} ({err}); further unreadable files are "
                  "skipped without a warning and counted", UnreadableImageWarning, stacklevel=3)


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open and fully decode an image as RGB (raises on unreadable or truncated files)."""
    with Image.open(path) as img:
        img.load()  # decode now: a truncated JPEG only fails here, not in open()
        return img.convert("RGB")


class ImageFolderDataset(ClassDataset):
    """Class folders as ``float32 [3, image_size, image_size]`` images in [-1, 1] (ADM centre crop).

    ``random_flip`` (default on) mirrors each image with probability 1/2 on every access.
    ``num_skipped`` counts the unreadable files this process met so far; they were replaced by the
    next readable index (same process, same substitute).
    """

    reads_from_disk = True

    def __init__(self, root: str | os.PathLike, image_size: int, *, random_flip: bool = True):
        if not isinstance(image_size, numbers.Integral) or image_size < 1:
            raise ValueError(f"image_size must be a positive int, got {image_size!r}")
        image_size = int(image_size)
        self.root = Path(root)
        self.classes, self.files, self.labels = scan_image_folder(self.root)
        self.in_channels = 3
        self.image_size = self.sample_size = image_size
        self.random_flip = bool(random_flip)
        self._bad: set[int] = set()

    @property
    def num_skipped(self) -> int:
        return len(self._bad)

    def path(self, i: int) -> Path:
        return self.root / os.fsdecode(self.files[i])

    def try_load(self, i: int) -> tuple[np.ndarray | None, str | None]:
        """``(uint8 [S, S, 3] centre-cropped array, None)``, or ``(None, error message)`` when file
        ``i`` is unreadable. No side effects, so DataLoader workers can call it and report back."""
        try:
            return center_crop_arr(load_rgb(self.path(i)), self.image_size), None
        # Decoders raise many types on corrupt data (OSError, SyntaxError, struct.error,
        # DecompressionBombError, ...); any failure to read one file must not end a run.
        except Exception as err:  # noqa: BLE001
            return None, f"{type(err).__name__}: {err}"

    def load(self, i: int) -> np.ndarray | None:
        """The centre-cropped ``uint8 [S, S, 3]`` array of file ``i``, or None if it is unreadable
        (then counted in ``num_skipped``; the first one also raises an UnreadableImageWarning)."""
        if i in self._bad:
            return None
        arr, err = self.try_load(i)
        if arr is None:
            self._bad.add(i)
            if len(self._bad) == 1:
                warn_unreadable(self.path(i), err)
        return arr

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        n = len(self.files)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} images")
        i %= n
        for k in range(n):
            j = (i + k) % n  # an unreadable file is replaced by the next readable one
            arr = self.load(j)
            if arr is not None:
                return random_hflip(to_model_range(arr), self.random_flip), int(self.labels[j])
        raise ValueError(f"none of the {n} images under {str(self.root)!r} is readable")
