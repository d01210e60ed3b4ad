"""Pixel transforms shared by the image datasets and latent extraction.

``center_crop_arr`` is the ADM preprocessing (Dhariwal & Nichol, "guided-diffusion"), which DiT
and DiG use for ImageNet: halve the image with a box filter while it is at least twice the target,
resize with bicubic so the short side equals the target, then take the centre square. Repeated box
halving before the final bicubic step avoids the aliasing a single large bicubic downsample gives.
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image


def center_crop_arr(pil_image: Image.Image, image_size: int) -> np.ndarray:
    """ADM centre crop of a PIL image to ``uint8 [image_size, image_size, C]`` (C as in the image).

    Takes an RGB (or L) PIL image of any size, including smaller than ``image_size`` (it is then
    upsampled with bicubic).
    """
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    while min(pil_image.size) >= 2 * image_size:
        pil_image = pil_image.resize(tuple(s // 2 for s in pil_image.size), resample=Image.BOX)
    scale = image_size / min(pil_image.size)
    pil_image = pil_image.resize(tuple(round(s * scale) for s in pil_image.size),
                                 resample=Image.BICUBIC)
    arr = np.asarray(pil_image)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return arr[top:top + image_size, left:left + image_size]


def to_model_range(arr: np.ndarray) -> torch.Tensor:
    """``uint8 [H, W, C]`` or ``[H, W]`` array -> ``float32 [C, H, W]`` tensor scaled to [-1, 1]."""
    t = torch.from_numpy(np.array(arr, dtype=np.uint8))  # a copy: PIL-backed arrays are read-only
    if t.ndim == 2:
        t = t[None]
    else:
        t = t.permute(2, 0, 1)
    return t.to(torch.float32).div_(127.5).sub_(1.0)


def random_hflip(x: torch.Tensor, enabled: bool) -> torch.Tensor:
    """Mirror ``x [..., W]`` along its last axis with probability 1/2 when ``enabled``.

    Draws from torch's default generator, so a seeded run (and each DataLoader worker, which torch
    seeds from the main process) flips reproducibly and a checkpoint's RNG state covers it.
    """
    if enabled and torch.rand(()) < 0.5:
        return x.flip(-1)
    return x
