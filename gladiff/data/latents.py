"""Pre-extracted VAE latents on disk (written by ``gladiff extract-latents``) and their dataset.

Layout of an extraction folder ``OUT``::

    OUT/manifest.json              settings (image_size, vae, scale, classes, ...) and the shard list
    OUT/shard_00000/mean.npy       float16/32 [n, F, C, h, w]  posterior mean (raw, unscaled)
    OUT/shard_00000/std.npy        float16/32 [n, F, C, h, w]  posterior std  (raw, unscaled)
    OUT/shard_00000/labels.npy     int64 [n]                   class index
    OUT/shard_00000/index.npy      int64 [n]                   index of the source file in scan order

``F`` is 2 when horizontally flipped copies were stored (copy 1 = the latent of the mirrored
image), else 1. Shard ``k`` covers source files ``[k * shard_size, (k + 1) * shard_size)``; ``n`` is
smaller than that when some were unreadable. We store the posterior's mean and std rather than one
sample so that training can draw a fresh sample every time an image is used, exactly as DiT's
``train.py`` does when it encodes online (``latent_dist.sample()``); ``posterior="mean"`` uses the
mean alone. Each shard is written to a temporary folder and renamed, so a folder named
``shard_XXXXX`` is always complete.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from gladiff.data.base import ClassDataset

FORMAT = "gladiff-latents"
VERSION = 1
MANIFEST = "manifest.json"
ARRAYS = ("mean", "std", "labels", "index")


def shard_name(k: int) -> str:
    return f"shard_{k:05d}"


def read_manifest(root: str | os.PathLike) -> dict:
    """The parsed ``manifest.json`` of an extraction folder (ValueError if absent or foreign)."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise ValueError(f"{str(root)!r} is not a latents folder: {MANIFEST} not found "
                         "(create one with `gladiff extract-latents`)")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a {FORMAT} manifest")
    if manifest.get("version") != VERSION:
        raise ValueError(f"{str(path)!r} has format version {manifest.get('version')}, "
                         f"this gladiff reads version {VERSION}")
    return manifest


def write_json_atomic(path: Path, obj: dict) -> None:
    """Write JSON to a temporary file and rename it over ``path`` (readers never see half a file)."""
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class LatentDataset(ClassDataset):
    """Scaled VAE latents ``float32 [C, h, w]`` (``scale * latent``) and labels from an extraction folder.

    ``image_size`` (optional) must match the extraction's pixel resolution. ``random_flip`` picks the
    stored mirrored copy with probability 1/2 when copies were stored (no effect otherwise: a
    mirrored latent is not the latent of the mirrored image). ``posterior="sample"`` draws
    ``mean + std * eps`` on every access; ``"mean"`` returns the mean. Arrays are memory-mapped,
    opened lazily in each process (DataLoader workers included).
    """

    is_latent = True

    def __init__(self, root: str | os.PathLike, image_size: int | None = None, *,
                 random_flip: bool = True, posterior: str = "sample"):
        self.root = Path(root)
        m = read_manifest(self.root)
        if not m.get("complete"):
            raise ValueError(f"latents in {str(self.root)!r} are incomplete (extraction was "
                             "interrupted): rerun the same `gladiff extract-latents` command to finish")
        if image_size is not None and image_size != m["image_size"]:
            raise ValueError(f"latents in {str(self.root)!r} were extracted at image_size "
                             f"{m['image_size']}, not {image_size}")
        if posterior not in ("sample", "mean"):
            raise ValueError(f"posterior must be 'sample' or 'mean', got {posterior!r}")
        self.manifest = m
        self.classes = list(m["classes"])
        self.image_size = int(m["image_size"])
        self.in_channels, self.sample_size = int(m["latent_shape"][0]), int(m["latent_shape"][1])
        self.vae, self.scale = m["vae"], float(m["scale"])
        self.has_flips = bool(m["flip"])
        self.random_flip = bool(random_flip) and self.has_flips
        self.posterior = posterior
        self.num_skipped = int(m["num_skipped"])
        self.shards = [s["name"] for s in m["shards"]]
        counts = np.array([s["count"] for s in m["shards"]], dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(counts)])
        labels = [np.load(self.root / s / "labels.npy") for s in self.shards]
        for s, c, lab in zip(self.shards, counts, labels):
            if len(lab) != c:
                raise ValueError(f"shard {s} holds {len(lab)} latents, the manifest says {c}")
        self.labels = np.concatenate(labels).astype(np.int64) if labels else np.zeros(0, np.int64)
        self._maps: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __getstate__(self):
        # Memory maps must not be pickled into worker processes (that would copy the data).
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state

    def _arrays(self, s: int) -> tuple[np.ndarray, np.ndarray]:
        if s not in self._maps:
            d = self.root / self.shards[s]
            self._maps[s] = (np.load(d / "mean.npy", mmap_mode="r"),
                             np.load(d / "std.npy", mmap_mode="r"))
        return self._maps[s]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        n = len(self.labels)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} latents")
        i %= n
        s = int(np.searchsorted(self.offsets, i, side="right")) - 1
        j = i - int(self.offsets[s])
        copy = int(torch.randint(2, ())) if self.random_flip else 0
        mean, std = self._arrays(s)
        z = torch.from_numpy(np.array(mean[j, copy], dtype=np.float32))
        if self.posterior == "sample":
            z += torch.from_numpy(np.array(std[j, copy], dtype=np.float32)) * torch.randn(z.shape)
        return z.mul_(self.scale), int(self.labels[i])
