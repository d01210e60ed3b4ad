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
import math
import os
import shutil
from pathlib import Path

import numpy as np
import torch

from gladiff.data.base import ClassDataset
from gladiff.files import write_text_atomic

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
    write_text_atomic(path, json.dumps(obj, indent=1))


def write_shard(out: Path, k: int, arrays: dict[str, np.ndarray]) -> None:
    """Write shard ``k`` (the ``ARRAYS``) into a temporary folder, fsync, then rename it into place,
    so a killed writer leaves either no ``shard_XXXXX`` or a complete one."""
    tmp = out / f"{shard_name(k)}.tmp-{os.getpid()}"
    tmp.mkdir()
    try:
        for name in ARRAYS:
            with open(tmp / f"{name}.npy", "wb") as f:
                np.save(f, arrays[name])
                f.flush()
                os.fsync(f.fileno())
        os.rename(tmp, out / shard_name(k))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def finalise_manifest(out: Path, settings: dict) -> dict | None:
    """If every shard of ``settings`` (``num_files``, ``shard_size``) exists under ``out``, write the
    complete manifest (per-shard counts and skips) and return it; else return None."""
    n, size = settings["num_files"], settings["shard_size"]
    num_shards = math.ceil(n / size)
    if not all((out / shard_name(k)).is_dir() for k in range(num_shards)):
        return None
    shards = []
    for k in range(num_shards):
        count = len(np.load(out / shard_name(k) / "labels.npy", mmap_mode="r"))
        shards.append({"name": shard_name(k), "count": count,
                       "skipped": min(size, n - k * size) - count})
    manifest = dict(settings, complete=True, shards=shards,
                    num_latents=sum(s["count"] for s in shards),
                    num_skipped=sum(s["skipped"] for s in shards))
    write_json_atomic(out / MANIFEST, manifest)
    return manifest


def save_latents(out: str | os.PathLike, mean: np.ndarray, labels: np.ndarray, *,
                 classes: list[str], image_size: int, vae: str, std: np.ndarray | None = None,
                 scale: float = 0.18215, shard_size: int = 4096, dtype: str = "float32") -> dict:
    """Write latents you already have as a latents folder (``latents:OUT`` then reads them).

    ``mean`` raw (unscaled) latents ``[N, C, h, w]``, or ``[N, 2, C, h, w]`` with flipped copies;
    ``std`` the same shape or None (zeros: ``mean`` is then used as is); ``labels`` int ``[N]``.
    Handy for tests and for latents made by another encoder. Returns the manifest.
    """
    mean = np.asarray(mean)
    if mean.ndim == 4:
        mean = mean[:, None]
    if mean.ndim != 5 or mean.shape[1] not in (1, 2):
        raise ValueError(f"mean must be [N, C, h, w] or [N, 2, C, h, w], got {mean.shape}")
    std = np.zeros_like(mean) if std is None else np.asarray(std).reshape(mean.shape)
    labels = np.asarray(labels, dtype=np.int64)
    if labels.shape != (len(mean),):
        raise ValueError(f"labels must be [{len(mean)}], got {labels.shape}")
    if len(labels) and not (0 <= labels.min() and labels.max() < len(classes)):
        raise ValueError(f"labels must lie in [0, {len(classes)})")
    out = Path(out)
    if (out / MANIFEST).exists():
        raise ValueError(f"{str(out)!r} already holds latents")
    out.mkdir(parents=True, exist_ok=True)
    store = {"float16": np.float16, "float32": np.float32}[dtype]
    settings = {"format": FORMAT, "version": VERSION, "source": None, "image_size": int(image_size),
                "vae": str(vae), "scale": float(scale), "latent_shape": list(mean.shape[2:]),
                "classes": list(classes), "flip": mean.shape[1] == 2, "dtype": dtype,
                "posterior": "mean_std", "shard_size": shard_size, "num_files": len(mean),
                "files_sha1": None}
    for k in range(math.ceil(len(mean) / shard_size)):
        sl = slice(k * shard_size, (k + 1) * shard_size)
        write_shard(out, k, {"mean": mean[sl].astype(store), "std": std[sl].astype(store),
                             "labels": labels[sl], "index": np.arange(len(mean))[sl]})
    return finalise_manifest(out, settings)


class LatentDataset(ClassDataset):
    """Scaled VAE latents ``float32 [C, h, w]`` (``scale * latent``) and labels from an extraction folder.

    ``image_size`` (optional) must match the extraction's pixel resolution. ``random_flip`` picks the
    stored mirrored copy with probability 1/2 when copies were stored (no effect otherwise: a
    mirrored latent is not the latent of the mirrored image). ``posterior="sample"`` draws
    ``mean + std * eps`` on every access; ``"mean"`` returns the mean. Arrays are memory-mapped,
    opened lazily in each process (DataLoader workers included).
    """

    is_latent = True
    reads_from_disk = True

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
            # A label >= num_classes would train as the model's null class (the guidance label).
            if len(lab) and (lab.min() < 0 or lab.max() >= len(self.classes)):
                k = len(self.classes)
                raise ValueError(f"shard {s} of {str(self.root)!r} holds labels in [{lab.min()}, {lab.max()}], "
                                 f"but the manifest lists {k} classes (labels 0..{k - 1}); the folder is "
                                 "inconsistent: extract the latents again")
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
