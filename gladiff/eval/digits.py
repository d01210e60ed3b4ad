"""The built-in quality check for digit samples: a small classifier of the real digits, and two numbers.

For class-conditional samples of the built-in digits (``gladiff.data.digits``) ``DigitScorer`` reports

- ``accuracy``: how often the classifier reads the requested class in a sample;
- ``fd``: the Fréchet distance between samples and the real digits in the classifier's penultimate
  (64-d) feature space, FID's construction with a digit network in place of Inception;
- ``fd_real_halves``: the same distance between two disjoint random halves of the real digits, each
  of ``min(N, 898)`` images: what data as good as the real thing scores at this sample size.

The classifier is trained here, on the training split of ``digits_split`` only (the held-out split
measures it), deterministically (fixed seeds, one CPU thread) in a few seconds; it is kept in memory
per process and saved under ``~/.cache/gladiff/digits`` (``$GLADIFF_CACHE`` overrides the root) so
later processes load it. Nothing is downloaded.
"""
from __future__ import annotations

import hashlib
import os
import weakref
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from gladiff.data.digits import DEFAULT_IMAGE_SIZE, NUM_CLASSES, digits_arrays, digits_split

from .batch import ClassifierReader, accuracy, fixed_threads, to_float_batch
from .frechet import frechet_distance, gaussian_statistics

FEATURE_DIM = 64
# Bump when the network or its training changes: it keys the on-disk cache.
RECIPE = "digit-cnn-v1: widths 16/32/64, BN, AdamW 1e-2 one-cycle, 8 epochs, batch 32, shift 1px, seed 0"
_TRAIN = dict(epochs=8, batch_size=32, lr=1e-2, weight_decay=1e-4, seed=0)


def default_cache_dir() -> Path:
    """``$GLADIFF_CACHE`` or ``~/.cache/gladiff``."""
    return Path(os.environ.get("GLADIFF_CACHE") or Path.home() / ".cache" / "gladiff").expanduser()


class DigitClassifier(nn.Module):
    """Three conv-BN-ReLU stages (16, 32, 64 channels; 2x2 max pools between), a 64-d feature layer, 10 logits."""

    def __init__(self, image_size: int = DEFAULT_IMAGE_SIZE):
        super().__init__()
        self.image_size = image_size

        def stage(cin, cout):
            return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.trunk = nn.Sequential(*stage(1, 16), nn.MaxPool2d(2), *stage(16, 32), nn.MaxPool2d(2),
                                   *stage(32, 64), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                                   nn.Linear(256, FEATURE_DIM), nn.ReLU())
        self.head = nn.Linear(FEATURE_DIM, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 1, S, S]`` images in [0, 1] -> ``[N, 64]`` penultimate features."""
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 1, S, S]`` images in [0, 1] -> ``[N, 10]`` logits."""
        return self.head(self.trunk(x))


def train_digit_classifier(image_size: int = DEFAULT_IMAGE_SIZE, epochs: int | None = None,
                           progress: bool = False) -> DigitClassifier:
    """Train a ``DigitClassifier`` on the training split of ``digits_split(image_size)``.

    Deterministic: fixed seeds, one CPU thread, random 1-pixel shifts drawn from a seeded generator.
    Takes a few seconds on a CPU. ``epochs`` overrides the recipe's 8 (for tests). Returns the
    network in eval mode on the CPU.
    """
    from tqdm.auto import tqdm

    cfg = dict(_TRAIN, epochs=epochs or _TRAIN["epochs"])
    images, labels, _, _ = digits_split(image_size)
    x = torch.from_numpy(images).float().div_(255)[:, None]
    y = torch.from_numpy(labels)
    with fixed_threads(1), torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        net = DigitClassifier(image_size)
        gen = torch.Generator().manual_seed(cfg["seed"])
        opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        steps_per_epoch = -(-len(x) // cfg["batch_size"])
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg["lr"], total_steps=cfg["epochs"] * steps_per_epoch)
        net.train()
        for _ in tqdm(range(cfg["epochs"]), desc="digit classifier", disable=not progress, unit="epoch"):
            order = torch.randperm(len(x), generator=gen)
            for start in range(0, len(x), cfg["batch_size"]):
                idx = order[start:start + cfg["batch_size"]]
                # Shift the batch by up to one pixel so the network does not key on exact placement.
                dy, dx = torch.randint(0, 3, (2,), generator=gen).tolist()
                batch = F.pad(x[idx], (1, 1, 1, 1))[:, :, dy:dy + image_size, dx:dx + image_size]
                loss = F.cross_entropy(net(batch), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    return net.eval().requires_grad_(False)


def _cache_key(image_size: int) -> str:
    images, labels = digits_arrays(image_size)
    h = hashlib.sha256(f"{RECIPE}|{sorted(_TRAIN.items())}|{image_size}|torch {torch.__version__}".encode())
    h.update(images.tobytes())
    h.update(labels.tobytes())
    return h.hexdigest()[:16]


_CLASSIFIERS: dict[int, DigitClassifier] = {}


def digit_classifier(image_size: int = DEFAULT_IMAGE_SIZE, cache_dir: str | os.PathLike | bool | None = None,
                     progress: bool = False) -> DigitClassifier:
    """The trained classifier for ``image_size``: from memory, else from the disk cache, else trained now.

    Args:
        image_size: resolution of the digits it reads.
        cache_dir: root of the disk cache (default ``default_cache_dir()``); ``False`` disables it.
        progress: show a progress bar while training.
    """
    if image_size in _CLASSIFIERS:
        return _CLASSIFIERS[image_size]
    path = None
    if cache_dir is not False:
        root = default_cache_dir() if cache_dir in (None, True) else Path(cache_dir)
        path = root / "digits" / f"classifier-{image_size}px-{_cache_key(image_size)}.pt"
    net = None
    if path is not None and path.is_file():
        try:
            net = DigitClassifier(image_size)
            net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            net.eval().requires_grad_(False)
        except (RuntimeError, OSError, ValueError):
            net = None  # a corrupt or stale file: retrain and overwrite it
    if net is None:
        net = train_digit_classifier(image_size, progress=progress)
        if path is not None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".tmp{os.getpid()}")
                torch.save(net.state_dict(), tmp)
                os.replace(tmp, path)
            except OSError:
                pass  # a read-only home is no reason to fail an evaluation
    _CLASSIFIERS[image_size] = net
    return net


def to_digit_batch(images, image_size: int) -> torch.Tensor:
    """uint8 images -> float ``[N, 1, image_size, image_size]`` in [0, 1].

    Accepts numpy arrays or tensors shaped ``[N, H, W]``, ``[N, H, W, 1|3]`` (NHWC) or ``[N, 1|3, H, W]``;
    colour is averaged to grey; other resolutions are resized (bilinear, antialiased when shrinking).
    """
    x = to_float_batch(images, image_size, "digit")
    return x.mean(dim=1, keepdim=True) if x.shape[1] != 1 else x


# Per classifier: features / statistics of the real digits and the real-halves distances, so that
# repeated scoring (e.g. every N training steps) only runs the samples through the network.
_REAL_CACHE: "weakref.WeakKeyDictionary[DigitClassifier, dict]" = weakref.WeakKeyDictionary()


class DigitScorer(ClassifierReader):
    """Accuracy and Fréchet distance of digit samples under the project's digit classifier.

    Args:
        image_size: the classifier's resolution (samples of other sizes are resized to it).
        cache_dir: disk cache root for the trained classifier (``False``: memory only).

    ``features`` (``[N, 64]``) and ``predict`` come from ``ClassifierReader``.
    """

    BATCH = 2048

    def __init__(self, image_size: int = DEFAULT_IMAGE_SIZE, cache_dir: str | os.PathLike | bool | None = None,
                 progress: bool = False):
        self.image_size = image_size
        self.net = digit_classifier(image_size, cache_dir=cache_dir, progress=progress)

    def to_batch(self, images) -> torch.Tensor:
        return to_digit_batch(images, self.image_size)

    def _real(self) -> dict:
        return _REAL_CACHE.setdefault(self.net, {})

    def real_features(self) -> np.ndarray:
        """``[1797, 64]`` features of all real digits (computed once per classifier)."""
        cache = self._real()
        if "features" not in cache:
            cache["features"] = self.features(digits_arrays(self.image_size)[0])
        return cache["features"]

    def score(self, images, labels=None, seed: int = 0) -> dict:
        """Score a batch of (class-conditional) digit samples.

        Args:
            images: N uint8 images, ``[N, H, W]`` or ``[N, H, W, 1|3]`` (or ``[N, 1|3, H, W]``).
            labels: ``[N]`` requested classes in 0..9, or None (then no accuracy).
            seed: seed of the random split of the real digits into halves.

        Returns:
            ``{"accuracy": float or None, "fd": float, "fd_real_halves": float, "n": N}``.
        """
        feats, preds = self._run(images)
        n = len(feats)
        if n < 2:
            raise ValueError(f"need at least 2 samples for a Fréchet distance, got {n}")
        acc = accuracy(preds, labels, NUM_CLASSES)
        fd = frechet_distance(*gaussian_statistics(feats), *self._real_statistics())
        return {"accuracy": acc, "fd": fd, "fd_real_halves": self.fd_real_halves(n, seed), "n": n}

    def _real_statistics(self) -> tuple[np.ndarray, np.ndarray]:
        cache = self._real()
        if "stats" not in cache:
            cache["stats"] = gaussian_statistics(self.real_features())
        return cache["stats"]

    def fd_real_halves(self, n: int, seed: int = 0) -> float:
        """Fréchet distance between two disjoint random subsets of the real digits, each of ``min(n, 898)``."""
        real = self.real_features()
        half = min(n, len(real) // 2)
        halves = self._real().setdefault("halves", {})
        if (half, seed) not in halves:
            order = np.random.default_rng(seed).permutation(len(real))
            halves[(half, seed)] = frechet_distance(*gaussian_statistics(real[order[:half]]),
                                                    *gaussian_statistics(real[order[half:2 * half]]))
        return halves[(half, seed)]
