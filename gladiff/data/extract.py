"""Encode an image folder into sharded VAE latents (the work behind ``gladiff extract-latents``).

Resumable: shard ``k`` always covers the same source files, is written to a temporary folder and
renamed when complete, and finished shards are skipped on restart, so re-running an interrupted
command produces the same folder an uninterrupted run would. Several processes (e.g. one per GPU
under ``torchrun``) may share the work: process ``rank`` of ``world_size`` does the shards
``k % world_size == rank``; whichever process finds all shards done writes the final manifest.
"""
from __future__ import annotations

import hashlib
import math
import os
import shutil
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from gladiff.data.imagefolder import ImageFolderDataset, warn_unreadable
from gladiff.data.latents import (ARRAYS, FORMAT, MANIFEST, VERSION, finalise_manifest,
                                  read_manifest, shard_name, write_json_atomic, write_shard)
from gladiff.data.transforms import to_model_range
from gladiff.data.vae import DEFAULT_VAE, encode_posterior, load_vae, vae_scale

STORE_DTYPES = {"float16": np.float16, "float32": np.float32}
# Settings that must agree between an interrupted run and its resumption.
_RESUME_KEYS = ("image_size", "vae", "scale", "latent_shape", "classes", "flip", "dtype",
                "posterior", "shard_size", "num_files", "files_sha1")


class _Crops(torch.utils.data.Dataset):
    """Centre crops of the folder's files for a DataLoader: ``(index, uint8 array or None, error)``."""

    def __init__(self, folder: ImageFolderDataset):
        self.folder = folder

    def __len__(self):
        return len(self.folder)

    def __getitem__(self, i):
        arr, err = self.folder.try_load(i)
        return i, arr, err


def _as_list(batch):
    return batch


def _files_digest(folder: ImageFolderDataset) -> str:
    h = hashlib.sha1()
    h.update(b"\0".join(folder.files.tolist()))
    h.update(folder.labels.tobytes())
    return h.hexdigest()


def extract_latents(source: str | os.PathLike, out: str | os.PathLike, *, image_size: int = 256,
                    vae: str | os.PathLike = DEFAULT_VAE, flip: bool = False, batch_size: int = 64,
                    shard_size: int = 4096, dtype: str = "float16",
                    device: str | torch.device | None = None, num_workers: int = 0,
                    rank: int = 0, world_size: int = 1, progress: bool = True) -> dict:
    """Encode the image folder ``source`` (ImageNet layout) into latent shards under ``out``.

    Each image gets the ADM centre crop to ``image_size``, is scaled to [-1, 1] and encoded by the
    ``AutoencoderKL`` ``vae`` (local directory or hub id); with ``flip`` its mirror image is encoded
    too. Stores the raw posterior mean and std as ``dtype`` (see ``gladiff.data.latents``).
    Returns the manifest (``complete`` is False when other processes still have shards to do).
    Raises ValueError when ``out`` holds an extraction with different settings.
    """
    if dtype not in STORE_DTYPES:
        raise ValueError(f"dtype must be one of {sorted(STORE_DTYPES)}, got {dtype!r}")
    for name, v in (("batch_size", batch_size), ("shard_size", shard_size), ("world_size", world_size)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    # Checked here, not by the DataLoader: that would fail after the manifest was written.
    if not isinstance(num_workers, int) or num_workers < 0:
        raise ValueError(f"num_workers (--workers) must be an int >= 0 (0: decode in this process), "
                         f"got {num_workers!r}")
    if Path(source).resolve() in Path(out).resolve().parents:
        raise ValueError(f"--out {str(out)!r} lies inside the image folder {str(source)!r}: "
                         "it would become a class folder")
    folder = ImageFolderDataset(source, image_size, random_flip=False)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = load_vae(vae, device=device)
    factor = 2 ** (len(model.config.block_out_channels) - 1)
    if image_size % factor:
        raise ValueError(f"image_size {image_size} is not divisible by the VAE's downsampling "
                         f"factor {factor}")
    # A local VAE is recorded by absolute path so sampling from elsewhere can find it again.
    vae_id = str(Path(vae).resolve()) if Path(vae).expanduser().is_dir() else os.fspath(vae)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {
        "format": FORMAT, "version": VERSION, "source": str(Path(source).resolve()),
        "image_size": image_size, "vae": vae_id, "scale": vae_scale(model),
        "latent_shape": [int(model.config.latent_channels), image_size // factor,
                         image_size // factor],
        "classes": folder.classes, "flip": bool(flip), "dtype": dtype, "posterior": "mean_std",
        "shard_size": shard_size, "num_files": len(folder), "files_sha1": _files_digest(folder),
    }
    if (out / MANIFEST).exists():
        old = read_manifest(out)
        diff = [k for k in _RESUME_KEYS if old.get(k) != settings[k]]
        if diff:
            raise ValueError(f"{str(out)!r} holds an extraction with different settings "
                             f"({', '.join(diff)}); use another --out or delete it")
        if old.get("complete"):
            return old
    else:
        write_json_atomic(out / MANIFEST, dict(settings, complete=False))

    n = len(folder)
    num_shards = math.ceil(n / shard_size)
    mine = [k for k in range(num_shards) if k % world_size == rank]
    todo = [k for k in mine if not (out / shard_name(k)).is_dir()]
    for k in todo:  # leftovers of a killed run (only ours: other ranks may be writing theirs)
        for stale in out.glob(f"{shard_name(k)}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)

    def span(k):
        return range(k * shard_size, min((k + 1) * shard_size, n))

    batches = [list(span(k))[b:b + batch_size] for k in todo
               for b in range(0, len(span(k)), batch_size)]
    batch_shard = [k for k in todo for _ in range(0, len(span(k)), batch_size)]
    loader = torch.utils.data.DataLoader(_Crops(folder), batch_sampler=batches,
                                         num_workers=num_workers, collate_fn=_as_list)
    store = STORE_DTYPES[dtype]
    latent_shape = settings["latent_shape"]
    copies = 2 if flip else 1
    bar = tqdm(total=sum(len(span(k)) for k in mine),
               initial=sum(len(span(k)) for k in mine if k not in todo),
               unit="img", desc="extract-latents" + (f" [rank {rank}]" if world_size > 1 else ""),
               disable=not progress, dynamic_ncols=True)
    parts: dict[str, list[np.ndarray]] = {a: [] for a in ARRAYS}
    skipped = 0
    for b, items in enumerate(loader):
        k = batch_shard[b]
        good = [(i, arr) for i, arr, _ in items if arr is not None]
        for i, arr, err in items:
            if arr is None:
                skipped += 1
                if skipped == 1:
                    warn_unreadable(folder.path(i), err)
        if good:
            x = torch.stack([to_model_range(arr) for _, arr in good])
            if flip:
                x = torch.cat([x, x.flip(-1)])
            mean, std = encode_posterior(model, x)
            # [copies * B, C, h, w] -> [B, copies, C, h, w]: copy 1 is the mirrored image.
            for name, t in (("mean", mean), ("std", std)):
                t = t.reshape(copies, len(good), *latent_shape).transpose(0, 1)
                parts[name].append(t.cpu().numpy().astype(store))
            parts["index"].append(np.array([i for i, _ in good], dtype=np.int64))
            parts["labels"].append(folder.labels[parts["index"][-1]])
        bar.update(len(items))
        bar.set_postfix(skipped=skipped, refresh=False)
        if b + 1 == len(batches) or batch_shard[b + 1] != k:  # last batch of shard k
            empty = {"mean": np.zeros((0, copies, *latent_shape), store),
                     "std": np.zeros((0, copies, *latent_shape), store),
                     "labels": np.zeros(0, np.int64), "index": np.zeros(0, np.int64)}
            write_shard(out, k, {a: np.concatenate(parts[a]) if parts[a] else empty[a]
                                  for a in ARRAYS})
            parts = {a: [] for a in ARRAYS}
    bar.close()
    return finalise_manifest(out, settings) or dict(settings, complete=False)
