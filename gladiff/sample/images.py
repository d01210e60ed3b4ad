"""Sample files: model outputs to uint8 pixels, PNG grids, and the ADM ``.npz`` evaluation format."""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1], ``float [N, C, H, W]`` -> ``uint8 [N, H, W, C]`` (the inverse of the
    data pipeline's ``u / 127.5 - 1``, rounded to the nearest level and clipped)."""
    if x.ndim != 4:
        raise ValueError(f"expected images [N, C, H, W], got shape {tuple(x.shape)}")
    u = ((x.detach().float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return u.permute(0, 2, 3, 1).cpu().numpy()


def make_grid(images: np.ndarray, nrow: int | None = None, pad: int = 2, pad_value: int = 0) -> np.ndarray:
    """``uint8 [N, H, W, C]`` -> one ``uint8 [rows*(H+pad)+pad, nrow*(W+pad)+pad, C]`` mosaic,
    filled row by row (``nrow`` images per row; default about square)."""
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images [N, H, W, C], got {images.dtype} {images.shape}")
    n, h, w, c = images.shape
    if n == 0:
        raise ValueError("no images to put in a grid")
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), pad_value, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y:y + h, x:x + w] = images[i]
    return grid


def save_grid(path: str | Path, images: np.ndarray, nrow: int | None = None, scale: int = 1) -> Path:
    """Write ``uint8 [N, H, W, C]`` images as one grid image (C 1 = grayscale, 3 = RGB); ``scale``
    enlarges it by pixel repetition so tiny images stay visible. The suffix picks the format: ``.png``
    (lossless; any other suffix too) or ``.jpg``/``.jpeg`` (JPEG quality 85: a grid of textured
    128 px samples is 7 MB as PNG, 1 MB as JPEG). Returns the path."""
    from PIL import Image

    grid = make_grid(images, nrow)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        if path.suffix.lower() in (".jpg", ".jpeg"):
            img.save(tmp, format="JPEG", quality=85)
        else:
            img.save(tmp, format="PNG")
        os.replace(tmp, path)
    except BaseException:  # a full disk, a folder where the file should go: leave no temporary file
        tmp.unlink(missing_ok=True)
        raise
    return path


SAMPLE_NAME = "{index:06d}_class{label}.png"  # one sample per file, its label in the name (eval/adm reads it)


def save_images(folder: str | Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """Write ``uint8 [N, H, W, C]`` images as one PNG each, ``SAMPLE_NAME`` (index and label in the
    name), into the new or empty ``folder``: the layout FID tools read (pytorch-fid, clean-fid,
    torch-fidelity), and ``gladiff eval`` reads the labels back from the names. The files are
    written into a temporary folder beside it that then takes its place, so a crash leaves no half
    set. Returns the folder."""
    from PIL import Image

    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 4 or images.dtype != np.uint8 or images.shape[-1] not in (1, 3):
        raise ValueError(f"expected uint8 images [N, H, W, 1 or 3], got {images.dtype} {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"expected {images.shape[0]} labels, got shape {labels.shape}")
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}")
    try:
        tmp.mkdir()
        for i, (img, label) in enumerate(zip(images, labels)):
            Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(
                tmp / SAMPLE_NAME.format(index=i, label=int(label)), format="PNG")
        os.replace(tmp, folder)  # onto a missing or empty folder
    except BaseException:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def write_npz(path: str | Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """The ADM evaluation format: ``arr_0`` = ``uint8 [N, H, W, C]`` images, ``arr_1`` = ``int64 [N]``
    labels. Written to a temporary file and renamed, so readers never see half a file."""
    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"arr_0 must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
    if images.shape[-1] not in (1, 3):
        raise ValueError(f"arr_0 must have 1 or 3 channels last, got shape {images.shape}")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"arr_1 must be [N] = [{images.shape[0]}] labels, got shape {labels.shape}")
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"sample archives end in .npz, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npz")
    try:
        np.savez(tmp, arr_0=images, arr_1=labels.astype(np.int64))
        os.replace(tmp, path)
    except BaseException:  # a full disk, a folder where the file should go: leave no temporary file
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [N, H, W, C], labels int64 [N])`` from an ADM-format ``.npz``."""
    with np.load(path) as f:
        if "arr_0" not in f:
            raise ValueError(f"{path} has no arr_0 (images)")
        images = f["arr_0"]
        labels = f["arr_1"] if "arr_1" in f else None
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"{path}: arr_0 must be uint8 [N, H, W, C], got {images.dtype} {images.shape}")
    if labels is None:
        raise ValueError(f"{path} has no arr_1 (labels)")
    return images, labels.astype(np.int64)
