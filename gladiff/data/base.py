"""What every gladiff dataset exposes to the training and sampling pipelines."""
from __future__ import annotations

import numpy as np
import torch


class ClassDataset(torch.utils.data.Dataset):
    """A class-conditional dataset: ``x, y = ds[i]`` with ``x`` float32 ``[in_channels, sample_size,
    sample_size]`` (pixels in [-1, 1], or VAE latents already multiplied by the VAE scale) and ``y``
    an int in ``[0, num_classes)``.

    Attributes the pipelines rely on:
      ``num_classes``, ``classes`` (names, index = label), ``labels`` (int64 ``[len]``),
      ``in_channels``, ``sample_size`` (spatial size of ``x``), ``image_size`` (pixel resolution),
      ``is_latent`` (True when ``x`` must be decoded through the VAE named by ``vae``),
      ``random_flip``, ``reads_from_disk`` (True when an item costs CPU time on access, read from
      files or rendered, so that loading it in worker processes pays; ``--num-workers auto`` asks).
    """

    classes: list[str]
    labels: np.ndarray
    in_channels: int
    sample_size: int
    image_size: int
    is_latent: bool = False
    random_flip: bool = False
    reads_from_disk: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)
