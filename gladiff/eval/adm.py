"""The ADM evaluation suite: FID, sFID, Inception Score, precision and recall of a sample batch.

This is the protocol of guided-diffusion's ``evaluations/evaluator.py`` (the numbers DiT and DiG
report): Inception-v3 ``pool_3`` features for FID, precision and recall (k = 3), the first 7
channels of ``mixed_6/conv`` for sFID, the bias-free 1008-way softmax over splits of 5,000 for the
Inception Score. Published numbers use 50,000 samples against the reference batch of the dataset
(for ImageNet 256: ``VIRTUAL_imagenet256_labeled.npz``, 10,000 images with precomputed statistics).

Batches are ``.npz`` files whose ``arr_0`` holds uint8 images ``[N, H, W, 3]`` (ADM's sample format;
``arr_1`` may hold labels), or folders of image files. A reference ``.npz`` may carry precomputed
``mu``, ``sigma`` (pool) and ``mu_s``, ``sigma_s`` (spatial) statistics, which are used as ADM does;
its images are still needed for precision/recall. Reference features and statistics are cached in
``<cache>/eval`` under the reference's content hash and the Inception weights' hash.
"""
from __future__ import annotations

import hashlib
import os
import re
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from .frechet import frechet_distance, gaussian_statistics
from .inception_score import inception_score, softmax
from .precision_recall import precision_recall

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
IMAGE_KEYS = ("arr_0", "images", "samples")
LABEL_KEYS = ("arr_1", "labels", "y")
# A folder of samples written by `gladiff sample --out DIR/` names each file 000123_class7.png.
LABEL_IN_NAME = re.compile(r"_class(\d+)\.\w+$")
STAT_KEYS = ("mu", "sigma", "mu_s", "sigma_s")
# Part of the cache key: bump when feature extraction changes.
PROTOCOL = "adm-v1"

# (batches of uint8 NHWC images, progress description) -> {"pool", "spatial", "logits": [N, D]}
FeatureExtractor = Callable[[Iterable[np.ndarray], str], dict]


def default_cache_dir() -> Path:
    """``$GLADIFF_CACHE/eval`` or ``~/.cache/gladiff/eval``."""
    root = os.environ.get("GLADIFF_CACHE") or Path.home() / ".cache" / "gladiff"
    return Path(root).expanduser() / "eval"


class _Batches:
    """A sized iterable of image batches (so progress bars know the total)."""

    def __init__(self, make: Callable[[], Iterator[np.ndarray]], count: int, batch_size: int):
        self._make, self._len = make, -(-count // batch_size)

    def __len__(self):
        return self._len

    def __iter__(self):
        return self._make()


def _npz_member(zf: zipfile.ZipFile, keys) -> str | None:
    names = set(zf.namelist())
    return next((f"{k}.npy" for k in keys if f"{k}.npy" in names), None)


class ImageSource:
    """Images from an ``.npz`` batch (streamed from the archive) or an image folder.

    Attributes:
        path: the file or folder.
        shape: ``(N, H, W, C)`` (C = 1 for single-channel images stored as ``[N, H, W]``).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if self.path.is_dir():
            self.files = sorted(p for p in self.path.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
            if not self.files:
                raise ValueError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in folder {self.path}")
            w, h = _read_image(self.files[0], size_only=True)
            self.shape = (len(self.files), h, w, 3)
        elif self.path.is_file():
            if not zipfile.is_zipfile(self.path):
                raise ValueError(f"{self.path} is not an .npz archive (or a folder of images)")
            self.files = None
            with zipfile.ZipFile(self.path) as zf:
                self._member = _npz_member(zf, IMAGE_KEYS)
                if self._member is None:
                    raise ValueError(f"{self.path} has no image array (looked for {', '.join(IMAGE_KEYS)})")
                with zf.open(self._member) as f:
                    shape, fortran, dtype = self._read_header(f)
            if len(shape) == 3:
                shape = (*shape, 1)
            if len(shape) != 4 or shape[-1] not in (1, 3):
                raise ValueError(f"{self.path}: images must be [N, H, W], [N, H, W, 1] or [N, H, W, 3] "
                                 f"(channels last, as ADM writes them), got {tuple(shape)}")
            if dtype != np.uint8:
                raise ValueError(f"{self.path}: images must be uint8 in 0..255, got {dtype}")
            self.shape, self._fortran, self._dtype = tuple(int(s) for s in shape), fortran, dtype
        else:
            raise FileNotFoundError(f"{self.path} does not exist")

    @staticmethod
    def _read_header(f):
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            return np.lib.format.read_array_header_1_0(f)
        return np.lib.format.read_array_header_2_0(f)

    def __len__(self) -> int:
        return self.shape[0]

    def batches(self, batch_size: int = 64) -> _Batches:
        """Sized iterable of uint8 ``[B, H, W, C]`` batches, in order."""
        return _Batches(lambda: self._iter(batch_size), len(self), batch_size)

    def _iter(self, batch_size: int) -> Iterator[np.ndarray]:
        if self.files is not None:
            yield from self._iter_folder(batch_size)
            return
        if self._fortran:  # rare: cannot stream, load whole
            images = self.load_all()
            for i in range(0, len(images), batch_size):
                yield images[i:i + batch_size]
            return
        item = self.shape[1] * self.shape[2] * self.shape[3]
        with zipfile.ZipFile(self.path) as zf, zf.open(self._member) as f:
            self._read_header(f)
            for start in range(0, len(self), batch_size):
                n = min(batch_size, len(self) - start)
                raw = f.read(n * item)
                if len(raw) != n * item:
                    raise ValueError(f"{self.path}: image array is truncated")
                yield np.frombuffer(raw, dtype=np.uint8).reshape(n, *self.shape[1:])

    def _iter_folder(self, batch_size: int) -> Iterator[np.ndarray]:
        for start in range(0, len(self.files), batch_size):
            batch = []
            for p in self.files[start:start + batch_size]:
                arr = _read_image(p)
                if arr.shape != self.shape[1:]:
                    raise ValueError(f"all images of {self.path} must have one size; {p} is "
                                     f"{arr.shape[1]}x{arr.shape[0]}, the first is {self.shape[2]}x{self.shape[1]}")
                batch.append(arr)
            yield np.stack(batch)

    def load_all(self) -> np.ndarray:
        """All images as one uint8 ``[N, H, W, C]`` array."""
        if self.files is not None:
            return np.concatenate(list(self._iter_folder(256)))
        with np.load(self.path) as data:
            images = np.asarray(data[self._member[:-4]])
        return images.reshape(self.shape)

    def labels(self) -> np.ndarray | None:
        """The ``arr_1`` / ``labels`` array of an ``.npz`` (int64 ``[N]``), the labels in the file
        names of a folder whose every file is named ``..._class<label>.png`` (as ``gladiff sample
        --out DIR/`` writes them), else None."""
        if self.files is not None:
            found = [LABEL_IN_NAME.search(p.name) for p in self.files]
            return np.array([int(m.group(1)) for m in found], dtype=np.int64) if all(found) else None
        with zipfile.ZipFile(self.path) as zf:
            member = _npz_member(zf, LABEL_KEYS)
        if member is None:
            return None
        with np.load(self.path) as data:
            labels = np.asarray(data[member[:-4]]).reshape(-1)
        if labels.shape[0] != len(self):
            raise ValueError(f"{self.path}: {labels.shape[0]} labels for {len(self)} images")
        return labels.astype(np.int64)

    def precomputed_statistics(self) -> dict | None:
        """``{"mu", "sigma", "mu_s", "sigma_s"}`` stored in an ADM reference ``.npz``, else None."""
        if self.files is not None:
            return None
        with np.load(self.path) as data:
            if not all(k in data.files for k in STAT_KEYS):
                return None
            return {k: np.asarray(data[k], dtype=np.float64) for k in STAT_KEYS}

    def content_hash(self) -> str:
        """SHA-256 of the archive's bytes, or of the folder's relative paths and file bytes."""
        digest = hashlib.sha256()
        for p in (self.files if self.files is not None else [self.path]):
            if self.files is not None:
                digest.update(str(p.relative_to(self.path)).encode() + b"\0")
            with open(p, "rb") as f:
                for piece in iter(lambda: f.read(1 << 20), b""):
                    digest.update(piece)
        return digest.hexdigest()


def _read_image(path: Path, size_only: bool = False):
    """The image file as uint8 RGB ``[H, W, 3]`` (or its ``(width, height)``); a file PIL cannot
    decode is a ``ValueError`` naming it (a batch must not be scored with an image missing)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size if size_only else np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as err:  # PIL's UnidentifiedImageError is an OSError
        raise ValueError(f"cannot read image {path} ({type(err).__name__}: {err}); "
                         "replace or remove it") from err


def inception_extractor(weights: str | os.PathLike | None = None, device=None, batch_size: int = 64,
                        progress: bool = True) -> tuple[FeatureExtractor, str]:
    """The default feature extractor (FID Inception-v3 from a local file) and its cache identity."""
    from .inception import extract_features, file_sha256, load_inception, resolve_weights_path

    path = resolve_weights_path(weights)
    net = load_inception(path, device=device)

    def extract(batches, desc):
        return extract_features(net, batches, batch_size=batch_size, progress=progress, desc=desc)

    return extract, f"inception-{file_sha256(path)[:16]}"


def reference_statistics(ref: ImageSource, extractor: FeatureExtractor, extractor_id: str,
                         cache_dir: str | os.PathLike | None = None, batch_size: int = 64) -> dict:
    """Pool features and FID/sFID statistics of a reference batch, cached by content hash.

    Returns:
        ``{"pool": [N, 2048] float32, "mu", "sigma", "mu_s", "sigma_s": float64, "n": N}``; the
        statistics are the reference file's own when it carries them (as ADM uses them).
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache_file = cache / f"ref-{ref.content_hash()[:24]}-{extractor_id}-{PROTOCOL}.npz"
    if cache_file.is_file():
        with np.load(cache_file) as data:
            return {"pool": data["pool"], **{k: data[k] for k in STAT_KEYS}, "n": int(data["pool"].shape[0])}
    feats = extractor(ref.batches(batch_size), "reference features")
    stats = ref.precomputed_statistics()
    if stats is None:
        (mu, sigma), (mu_s, sigma_s) = gaussian_statistics(feats["pool"]), gaussian_statistics(feats["spatial"])
        stats = {"mu": mu, "sigma": sigma, "mu_s": mu_s, "sigma_s": sigma_s}
    out = {"pool": feats["pool"].astype(np.float32), **stats}
    try:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(cache_file.stem + f".tmp{os.getpid()}.npz")
        np.savez(tmp, **out)
        os.replace(tmp, cache_file)
    except OSError:
        pass  # no writable cache: recompute next time
    return {**out, "n": int(out["pool"].shape[0])}


def evaluate(samples, ref, *, inception: str | os.PathLike | None = None,
             extractor: FeatureExtractor | None = None, extractor_id: str | None = None,
             batch_size: int = 64, device=None, cache_dir: str | os.PathLike | None = None,
             progress: bool = True) -> dict:
    """Run the ADM evaluation suite.

    Args:
        samples: ``.npz`` / image folder path, an ``ImageSource``, or a uint8 array ``[N, H, W, 3]``.
        ref: reference ``.npz`` (ADM reference batch) or image folder.
        inception: Inception weights file (default ``$GLADIFF_INCEPTION``); unused with ``extractor``.
        extractor, extractor_id: a replacement feature extractor and a string naming it in the cache.
        batch_size: images per Inception forward pass.
        device: where features and distances are computed (default CUDA when available).
        cache_dir: reference-statistics cache (default ``~/.cache/gladiff/eval``).

    Returns:
        ``{"inception_score", "fid", "sfid", "precision", "recall", "n_samples", "n_reference"}``.
    """
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if extractor is None:
        extractor, extractor_id = inception_extractor(inception, device=device, batch_size=batch_size,
                                                      progress=progress)
    elif extractor_id is None:
        raise ValueError("a custom extractor needs an extractor_id (it keys the reference cache)")
    ref_source = ref if isinstance(ref, ImageSource) else ImageSource(ref)
    ref_stats = reference_statistics(ref_source, extractor, extractor_id, cache_dir, batch_size)

    if isinstance(samples, (str, os.PathLike)):
        samples = ImageSource(samples)
    if isinstance(samples, ImageSource):
        batches = samples.batches(batch_size)
    else:
        array = np.asarray(samples)
        if array.dtype != np.uint8 or array.ndim not in (3, 4):
            raise ValueError(f"samples must be uint8 [N, H, W(, C)] images, got {array.dtype} {array.shape}")
        batches = _Batches(lambda: (array[i:i + batch_size] for i in range(0, len(array), batch_size)),
                           len(array), batch_size)
    feats = extractor(batches, "sample features")
    if feats["pool"].shape[0] < 2:
        raise ValueError("need at least 2 samples")
    mu, sigma = gaussian_statistics(feats["pool"])
    mu_s, sigma_s = gaussian_statistics(feats["spatial"])
    precision, recall = precision_recall(torch.from_numpy(ref_stats["pool"]).to(device),
                                         torch.from_numpy(feats["pool"]).to(device))
    return {
        "inception_score": inception_score(softmax(feats["logits"])),
        "fid": frechet_distance(mu, sigma, ref_stats["mu"], ref_stats["sigma"]),
        "sfid": frechet_distance(mu_s, sigma_s, ref_stats["mu_s"], ref_stats["sigma_s"]),
        "precision": precision,
        "recall": recall,
        "n_samples": int(feats["pool"].shape[0]),
        "n_reference": ref_stats["n"],
    }
