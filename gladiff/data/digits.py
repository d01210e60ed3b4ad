"""The built-in dataset: scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes).

The images ship inside scikit-learn, so nothing is downloaded. They are upscaled to a small pixel
resolution (bilinear, 0..16 intensities mapped to 0..255) and used class-conditionally.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

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
