"""Class-conditional generation in batches, split over processes, reproducible per seed.

The ``N`` requested samples are cut into global batches of ``batch_size`` consecutive indices;
batch ``b`` always draws its noise from the seed ``batch_seed(seed, b)`` and is computed by rank
``b % world_size``. The images for a seed are therefore the same whatever the number of processes
(they depend on ``seed`` and ``batch_size`` only), and every rank knows which indices it holds.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from gladiff.train.parallel import Dist

from .images import to_uint8


def class_labels(num_samples: int, num_classes: int, classes=None, seed: int = 0) -> torch.Tensor:
    """The label of every sample, ``int64 [num_samples]``.

    ``classes`` given: they repeat in order (``classes[i % len(classes)]``), so a grid with
    ``len(classes)`` columns shows one class per column. ``None``: uniform random classes drawn from
    ``seed`` (the same on every rank).
    """
    if num_samples <= 0:
        raise ValueError(f"num_samples must be > 0, got {num_samples}")
    if classes is None:
        g = torch.Generator().manual_seed(int(seed))
        return torch.randint(num_classes, (num_samples,), generator=g)
    classes = torch.as_tensor(list(classes), dtype=torch.int64)
    if classes.numel() == 0:
        raise ValueError("classes is empty")
    bad = classes[(classes < 0) | (classes >= num_classes)]
    if bad.numel():
        raise ValueError(f"classes {bad.tolist()} are outside [0, {num_classes}) of this model")
    return classes.repeat(-(-num_samples // classes.numel()))[:num_samples]


def batch_seed(seed: int, batch_index: int) -> int:
    """The noise seed of global batch ``batch_index`` (distinct batches, distinct streams)."""
    return (int(seed) * 1_000_003 + int(batch_index)) % (2**63)


def my_batches(num_samples: int, batch_size: int, dist: Dist) -> list[tuple[int, int, int]]:
    """``(batch_index, start, stop)`` of the global batches this rank computes."""
    n_batches = -(-num_samples // batch_size)
    return [(b, b * batch_size, min(num_samples, (b + 1) * batch_size))
            for b in range(dist.rank, n_batches, dist.world_size)]


@torch.no_grad()
def generate(model: torch.nn.Module, objective, labels: torch.Tensor, sample_shape, *, seed: int = 0,
             batch_size: int = 64, sampler: str | None = None, steps=None, cfg_scale: float = 1.0,
             dist: Dist = Dist(), decode: Callable | None = None, autocast=None,
             progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Sample this rank's share of ``labels`` (``int64 [N]``).

    ``sample_shape`` is ``(C, h, w)`` of the model's input. ``decode`` (e.g. the VAE) maps a batch of
    model outputs to images in [-1, 1]; ``None`` means the outputs are the images. ``autocast`` is an
    optional context-manager factory wrapping each batch.

    Returns ``(indices int64 [n], images uint8 [n, H, W, C])``: the global sample indices this rank
    computed and their pixels.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be > 0, got {batch_size}")
    device = dist.device
    labels = torch.as_tensor(labels, dtype=torch.int64)
    batches = my_batches(len(labels), batch_size, dist)
    indices, images = [], []
    bar = tqdm(batches, desc="sampling", unit="batch", disable=not (progress and dist.is_main),
               dynamic_ncols=True)
    for b, lo, hi in bar:
        y = labels[lo:hi].to(device)
        with autocast() if autocast else contextlib.nullcontext():
            x = objective.sample(model, (hi - lo, *sample_shape), y, sampler=sampler, steps=steps,
                                 cfg_scale=cfg_scale, seed=batch_seed(seed, b), device=device)
            if decode is not None:
                x = decode(x)
        images.append(to_uint8(x.float()))
        indices.append(np.arange(lo, hi))
    if not images:  # more ranks than batches: this rank holds nothing
        return np.zeros(0, np.int64), np.zeros((0, 0, 0, 0), np.uint8)
    return np.concatenate(indices).astype(np.int64), np.concatenate(images)

