"""The built-in dataset: scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes).

The images ship inside scikit-learn, so nothing is downloaded. They are upscaled to a small pixel
resolution (bilinear, 0..16 intensities mapped to 0..255) and used class-conditionally.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from gladiff.data.base import ClassDataset
from gladiff.data.transforms import random_hflip, to_model_range

NUM_CLASSES = 10
DEFAULT_IMAGE_SIZE = 16


def digits_arrays(image_size: int = DEFAULT_IMAGE_SIZE) -> tuple[np.ndarray, np.ndarray]:
    """All 1,797 digits as ``uint8 [N, image_size, image_size]`` images and ``int64 [N]`` labels."""
    from sklearn.datasets import load_digits

    if image_size < 8:
        raise ValueError(f"image_size must be >= 8 (the digits are 8x8), got {image_size}")
    data = load_digits()
    images = torch.from_numpy(data.images.astype(np.float32) / 16.0)[:, None]  # [N, 1, 8, 8] in [0, 1]
    if image_size != 8:
        images = F.interpolate(images, size=(image_size, image_size), mode="bilinear",
                               align_corners=False)
    images = (images.clamp(0, 1) * 255).round().to(torch.uint8)[:, 0].numpy()
    return images, data.target.astype(np.int64)


def digits_split(image_size: int = DEFAULT_IMAGE_SIZE, holdout: float = 0.2, seed: int = 0):
    """Deterministic stratified-by-shuffle split: ``(train_images, train_labels, test_images, test_labels)``."""
    images, labels = digits_arrays(image_size)
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = int(round(holdout * len(labels)))
    test, train = order[:n_test], order[n_test:]
    return images[train], labels[train], images[test], labels[test]


class DigitsDataset(ClassDataset):
    """The built-in digits as a class-conditional dataset of ``float32 [1, S, S]`` images in [-1, 1].

    Random horizontal flips are off by default: a mirrored digit is a different glyph (a flipped
    3 looks like an epsilon, a flipped 7 like no digit), so flipping would teach the model wrong
    class appearances.
    """

    def __init__(self, image_size: int = DEFAULT_IMAGE_SIZE, *, random_flip: bool = False):
        images, labels = digits_arrays(image_size)
        self.images = images
        self.labels = labels
        self.classes = [str(c) for c in range(NUM_CLASSES)]
        self.in_channels = 1
        self.image_size = self.sample_size = image_size
        self.random_flip = bool(random_flip)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = random_hflip(to_model_range(self.images[i]), self.random_flip)
        return x, int(self.labels[i])
