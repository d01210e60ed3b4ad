"""The built-in quality check for glyph samples: a classifier of real renders, and what it reads.

For class-conditional samples of the built-in glyphs (``gladiff.data.glyphs``) ``GlyphScorer`` reports

- ``accuracy``: how often the classifier reads the requested class in a sample;
- ``fd``: the Fréchet distance between the samples and ``m = min(N, n_reference / 2)`` real renders
  (reference half A) in the classifier's penultimate (128-d) feature space, FID's construction with
  a glyph network in place of Inception;
- ``precision`` / ``recall``: improved precision and recall (k = 3, as ADM computes them) of the
  samples against the same real renders in that space;
- ``fd_real_halves``, ``precision_real_halves``, ``recall_real_halves``: the same numbers for ``m``
  other real renders (half B) in place of the samples: what data as good as the real thing scores.

The real renders are drawn at the samples' resolution from seed ``REFERENCE_SEED`` (neither the
training data's seed 0 nor the classifier's), and both they and the samples are resized to the
classifier's 64 px the same way.

The classifier's weights ship with the package (``glyph_classifier.pt``, stored in float16):
every machine reads samples with the same network, so numbers compare across machines and torch
builds, and a fresh GPU machine scores at once. ``python -m gladiff.eval.glyphs`` remakes them with
``train_glyph_classifier`` (deterministic: fixed seeds, one CPU thread; minutes on a CPU) and prints
the held-out accuracy; the file records the recipe, the class set and the render version, and
loading refuses a file made for others.
"""
from __future__ import annotations

import argparse
import time
import weakref
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from gladiff.data.glyphs import (CLASSES, NUM_CLASSES, RENDER_VERSION, check_image_size, glyphs_arrays,
                                 render_glyph)

from .batch import ClassifierReader, accuracy, fixed_threads, to_float_batch
from .frechet import frechet_distance, gaussian_statistics
from .precision_recall import precision_recall

CLASSIFIER_SIZE = 64  # what the network reads; samples of other sizes are resized to it
FEATURE_DIM = 128
WIDTHS = (32, 32, 64, 128)
# Render seeds: the diffusion training data is seed 0; the classifier trains on TRAIN_SEED, is
# measured on TEST_SEED, and the check's real renders come from REFERENCE_SEED.
TRAIN_SEED, TEST_SEED, REFERENCE_SEED = 1, 2, 3
_TRAIN = dict(n_train=24_000, low_res_every=4, epochs=6, batch_size=128, lr=3e-3, weight_decay=5e-4,
              label_smoothing=0.05, seed=0)
# Bump when the network or its training changes; the weights file must carry the same string.
RECIPE = ("glyph-cnn-v1: widths 32/32/64/128, stride-2 stem, BN, 128-d features; AdamW 3e-3 one-cycle, "
          "wd 5e-4, label smoothing 0.05, 6 epochs of 24,000 renders (every 4th at 32 px, upsampled), "
          "batch 128, seed 0, one thread")
WEIGHTS = Path(__file__).with_name("glyph_classifier.pt")
DEFAULT_REFERENCE = 10_000


class GlyphClassifier(nn.Module):
    """A stride-2 conv stem, four conv-BN-ReLU stages (2x2 max pools between, global average at the
    end), a 128-d feature layer and one logit per glyph class."""

    def __init__(self, widths: tuple[int, ...] = WIDTHS, num_classes: int = NUM_CLASSES):
        super().__init__()
        w0, w1, w2, w3 = widths
        self.widths = tuple(widths)

        def stage(cin, cout, stride=1):
            return [nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]

        self.trunk = nn.Sequential(*stage(3, w0, 2), *stage(w0, w1), nn.MaxPool2d(2), *stage(w1, w2),
                                   nn.MaxPool2d(2), *stage(w2, w3), nn.MaxPool2d(2), *stage(w3, w3),
                                   nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(w3, FEATURE_DIM), nn.ReLU())
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 3, 64, 64]`` images in [0, 1] -> ``[N, 128]`` penultimate features."""
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 3, 64, 64]`` images in [0, 1] -> ``[N, num_classes]`` logits."""
        return self.head(self.trunk(x))


def to_glyph_batch(images) -> torch.Tensor:
    """uint8 images in any layout ``to_float_batch`` takes -> float ``[N, 3, 64, 64]`` in [0, 1]
    (grey images are repeated to three channels)."""
    x = to_float_batch(images, CLASSIFIER_SIZE, "glyph")
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def train_glyph_classifier(n_train: int | None = None, epochs: int | None = None, widths: tuple[int, ...] = WIDTHS,
                           batch_size: int | None = None, progress: bool = False) -> GlyphClassifier:
    """Train a ``GlyphClassifier`` on renders ``0 .. n_train - 1`` of seed ``TRAIN_SEED``.

    Every ``low_res_every``-th render is drawn at 32 px and upsampled as ``to_glyph_batch`` does,
    the rest at 64 px, so the network reads both native and upsampled glyphs (128 px samples are
    shrunk to 64 px, which looks like a native render). Deterministic: fixed seeds, one CPU thread.
    ``n_train``, ``epochs``, ``widths`` and ``batch_size`` override the recipe (for tests). Returns
    the network in eval mode on the CPU.
    """
    from tqdm.auto import tqdm

    cfg = dict(_TRAIN, n_train=n_train or _TRAIN["n_train"], epochs=epochs or _TRAIN["epochs"],
               batch_size=batch_size or _TRAIN["batch_size"])
    n, every, bs = cfg["n_train"], cfg["low_res_every"], cfg["batch_size"]
    index = np.arange(n)
    low = index % every == every - 1
    images = {}
    for size, sel in ((CLASSIFIER_SIZE, ~low), (CLASSIFIER_SIZE // 2, low)):
        images[size] = np.zeros((int(sel.sum()), size, size, 3), np.uint8)
        for row, i in enumerate(index[sel]):
            images[size][row] = render_glyph(TRAIN_SEED, int(i), size)
    position = np.zeros(n, np.int64)  # row of image i in its resolution's array
    position[~low], position[low] = np.arange((~low).sum()), np.arange(low.sum())
    labels = torch.from_numpy(index % NUM_CLASSES)

    def batch(idx: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        parts, ys = [], []
        for size, sel in ((CLASSIFIER_SIZE, ~low[idx]), (CLASSIFIER_SIZE // 2, low[idx])):
            if sel.any():
                parts.append(to_glyph_batch(images[size][position[idx[sel]]]))
                ys.append(labels[idx[sel]])
        return torch.cat(parts), torch.cat(ys)

    with fixed_threads(1), torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        net = GlyphClassifier(widths)
        gen = torch.Generator().manual_seed(cfg["seed"])
        opt = torch.optim.AdamW(net.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        steps_per_epoch = n // bs
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg["lr"], total_steps=cfg["epochs"] * steps_per_epoch)
        net.train()
        for _ in tqdm(range(cfg["epochs"]), desc="glyph classifier", disable=not progress, unit="epoch"):
            order = torch.randperm(n, generator=gen).numpy()
            for k in range(steps_per_epoch):
                x, y = batch(order[k * bs:(k + 1) * bs])
                loss = F.cross_entropy(net(x), y, label_smoothing=cfg["label_smoothing"])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
    return net.eval().requires_grad_(False)


@torch.no_grad()
def held_out_accuracy(net: GlyphClassifier, image_size: int = CLASSIFIER_SIZE, n: int = 2000) -> float:
    """Accuracy of ``net`` on renders ``0 .. n - 1`` of seed ``TEST_SEED`` at ``image_size``."""
    images, labels = glyphs_arrays(n, image_size, TEST_SEED)
    preds = torch.cat([net(to_glyph_batch(images[i:i + 500])).argmax(1) for i in range(0, n, 500)])
    return float((preds.numpy() == labels).mean())


def save_weights(net: GlyphClassifier, path: str | Path = WEIGHTS, **facts) -> Path:
    """Write ``net`` (floats as float16) with the recipe, class set, render version and ``facts``."""
    state = {k: v.half() if v.is_floating_point() else v for k, v in net.state_dict().items()}
    torch.save({"recipe": RECIPE, "classes": "".join(CLASSES), "render_version": RENDER_VERSION,
                "widths": list(net.widths), "state_dict": state, **facts}, path)
    return Path(path)


def load_weights(path: str | Path = WEIGHTS) -> GlyphClassifier:
    """The classifier in ``path`` (float32, eval mode); ``RuntimeError`` if it was made for another
    recipe, class set or render version than this code's."""
    saved = torch.load(path, map_location="cpu", weights_only=True)
    expected = {"recipe": RECIPE, "classes": "".join(CLASSES), "render_version": RENDER_VERSION}
    stale = {k: saved.get(k) for k, v in expected.items() if saved.get(k) != v}
    if stale:
        raise RuntimeError(f"{path} was made for {stale}, not this code's {({k: expected[k] for k in stale})}; "
                           "remake it with: python -m gladiff.eval.glyphs")
    net = GlyphClassifier(tuple(saved["widths"]))
    net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in saved["state_dict"].items()})
    return net.eval().requires_grad_(False)


_CLASSIFIER: list[GlyphClassifier] = []


def glyph_classifier() -> GlyphClassifier:
    """The shipped classifier (loaded once per process)."""
    if not _CLASSIFIER:
        _CLASSIFIER.append(load_weights(WEIGHTS))
    return _CLASSIFIER[0]


# Per classifier: features of the real renders (per size and half) and the real-vs-real numbers, so
# that repeated scoring (e.g. every minute of a training run) only runs the samples through it.
_REAL_CACHE: "weakref.WeakKeyDictionary[GlyphClassifier, dict]" = weakref.WeakKeyDictionary()


class GlyphScorer(ClassifierReader):
    """Accuracy, Fréchet distance, precision and recall of glyph samples under the glyph classifier.

    Args:
        n_reference: real renders available per sample resolution, two halves of ``n_reference // 2``;
            ``2 * min(N, n_reference // 2)`` of them are drawn for N samples.
        net: the classifier (default: the shipped one).
        progress: show a progress bar while the real renders are drawn.

    ``features`` (``[N, 128]``) and ``predict`` come from ``ClassifierReader``.
    """

    def __init__(self, n_reference: int = DEFAULT_REFERENCE, net: GlyphClassifier | None = None,
                 progress: bool = False):
        if n_reference < 8:
            raise ValueError(f"n_reference must be >= 8, got {n_reference}")
        self.net = glyph_classifier() if net is None else net
        self.n_reference = int(n_reference)
        self.progress = progress

    def to_batch(self, images) -> torch.Tensor:
        return to_glyph_batch(images)

    def reference_features(self, image_size: int, m: int) -> tuple[np.ndarray, np.ndarray]:
        """Features ``[m, 128]`` of the two halves of real renders at ``image_size``: A is renders
        ``0 .. m - 1`` of ``REFERENCE_SEED``, B renders ``n_reference // 2 ..`` (each a contiguous
        run of indices, so every class appears equally often, +-1). Rendered on first need and kept
        per classifier and size; ``m`` is at most ``n_reference // 2``."""
        half = self.n_reference // 2
        if not 1 <= m <= half:
            raise ValueError(f"m must be in 1..{half} (n_reference // 2), got {m}")
        cache = _REAL_CACHE.setdefault(self.net, {})
        out = []
        for start in (0, half):
            key = ("features", image_size, start)
            have = cache.get(key, np.zeros((0, FEATURE_DIM)))
            if len(have) < m:
                from tqdm.auto import tqdm

                parts, chunk = [have], 500
                for lo in tqdm(range(len(have), m, chunk), desc=f"real glyphs at {image_size} px", unit="x500",
                               disable=not self.progress):
                    images, _ = glyphs_arrays(min(chunk, m - lo), image_size, REFERENCE_SEED, start + lo)
                    parts.append(self.features(images))
                cache[key] = have = np.concatenate(parts)
            out.append(have[:m])
        return out[0], out[1]

    def _real_vs_real(self, image_size: int, m: int) -> dict:
        cache = _REAL_CACHE.setdefault(self.net, {})
        key = ("halves", image_size, self.n_reference, m)
        if key not in cache:
            a, b = self.reference_features(image_size, m)
            p, r = precision_recall(a, b)
            cache[key] = {"fd_real_halves": frechet_distance(*gaussian_statistics(b), *gaussian_statistics(a)),
                          "precision_real_halves": p, "recall_real_halves": r}
        return cache[key]

    def score(self, images, labels=None, image_size: int | None = None) -> dict:
        """Score a batch of (class-conditional) glyph samples.

        Args:
            images: N uint8 RGB images, ``[N, S, S, 3]`` (or ``[N, 3, S, S]``).
            labels: ``[N]`` requested classes in ``0 .. NUM_CLASSES - 1``, or None (then no accuracy).
            image_size: resolution of the real renders to compare with (default: the images' own, a
                multiple of 16).

        Returns:
            ``{"accuracy", "fd", "precision", "recall", "fd_real_halves", "precision_real_halves",
            "recall_real_halves", "n", "n_reference", "image_size"}``; ``accuracy`` is None without
            labels, ``n_reference`` is ``m``, the real renders each side of the comparison.
        """
        shape = tuple(np.shape(images))
        size = check_image_size(int(image_size or (shape[1] if len(shape) == 4 and shape[-1] in (1, 3) else shape[-1])))
        feats, preds = self._run(images)
        n = len(feats)
        if n < 4:
            raise ValueError(f"need at least 4 samples for the Fréchet distance and precision/recall, got {n}")
        acc = accuracy(preds, labels, NUM_CLASSES)
        m = min(n, self.n_reference // 2)
        ref, _ = self.reference_features(size, m)
        precision, recall = precision_recall(ref, feats)
        return {"accuracy": acc, "fd": frechet_distance(*gaussian_statistics(feats), *gaussian_statistics(ref)),
                "precision": precision, "recall": recall, **self._real_vs_real(size, m),
                "n": n, "n_reference": m, "image_size": size}


def main(argv=None) -> int:
    """Remake the shipped weights: train with the recipe, report held-out accuracy, write the file."""
    p = argparse.ArgumentParser(prog="python -m gladiff.eval.glyphs", description=main.__doc__)
    p.add_argument("--out", default=str(WEIGHTS), help=f"weights file (default {WEIGHTS})")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    net = train_glyph_classifier(progress=True)
    seconds = time.perf_counter() - t0
    path = save_weights(net, args.out)
    shipped = load_weights(path)  # what users get: the float16 weights read back as float32
    held_out = {f"{s}px": held_out_accuracy(shipped, s) for s in (32, 64, 128)}
    save_weights(shipped, path, held_out_accuracy=held_out, train_seconds=round(seconds, 1),
                 torch_version=str(torch.__version__))
    print(f"trained in {seconds:.0f} s; held-out accuracy (2,000 renders each): "
          + ", ".join(f"{s} {100 * a:.2f}%" for s, a in held_out.items())
          + f"; wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
