"""Sampling a trained model into files, over one process or many (``torchrun``).

Each rank computes its global batches (``generate``), writes its share to a temporary ``.npz``,
and rank 0 merges the shares in sample-index order and writes the outputs: a PNG grid, an
ADM-format ``.npz`` and/or a folder of one PNG per sample (an output path ending in ``/``).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from gladiff.errors import StorageError, UsageError, check_output_file, check_writable_dir, writing
from gladiff.models import uncompile_blocks
from gladiff.models.payback import options_for
from gladiff.train import parallel
from gladiff.train.parallel import Dist

from .auto import AutoExecution
from .generate import generate, my_batches
from .graphed import for_sampling, resolve_execution
from .images import save_grid, save_images, write_npz
from .load import Trained


def sample_images(trained: Trained, labels: torch.Tensor, *, seed: int = 0, batch_size: int = 64,
                  sampler: str | None = None, steps=None, cfg_scale: float = 1.0, dist: Dist = Dist(),
                  decode=None, autocast=None, share_dir: str | Path = ".", progress: bool = True,
                  execution: str = "eager", compile_scope: str = "model"):
    """All samples for ``labels`` (``int64 [N]``) on rank 0 as ``(images uint8 [N, H, W, C],
    labels int64 [N])``; other ranks return ``None``. With several processes every rank writes
    its share under ``share_dir`` and rank 0 merges them (then deletes the shares). ``execution``:
    how the network runs (``graphed.EXECUTIONS``: eager, compile, graph, compile+graph; or ``"auto"``:
    eager off CUDA, else decided while sampling by ``gladiff.sample.auto``);
    ``compile_scope``: what the compiled executions compile, ``"model"`` (one graph) or ``"blocks"``
    (each block; ``trained.model`` runs eagerly again afterwards)."""
    labels = torch.as_tensor(labels, dtype=torch.int64)
    execution = resolve_execution(execution, dist.device)
    if execution == "auto":
        passes_of = getattr(trained.objective, "network_passes", None)  # stand-in objectives lack it
        passes = passes_of(sampler, steps) if passes_of else None
        planned = len(my_batches(len(labels), batch_size, dist)) * (passes or 0)  # unknown: stays eager
        model = AutoExecution(trained.model, dist.device, planned,
                              options_for("sample", trained.spec.get("name")), compile_scope,
                              report=tqdm.write if dist.is_main else (lambda line: None))
    else:
        model = for_sampling(trained.model, execution, dist.device, compile_scope)
    try:
        indices, images = generate(model, trained.objective, labels, trained.sample_shape,
                                   seed=seed, batch_size=batch_size, sampler=sampler, steps=steps,
                                   cfg_scale=cfg_scale, dist=dist, decode=decode, autocast=autocast,
                                   progress=progress)
    finally:
        if execution != "eager" and compile_scope == "blocks":  # auto may have compiled them
            uncompile_blocks(trained.model)  # the caller's model: leave it as it came
    if not dist.distributed:
        return images, labels.numpy()
    shares = Path(share_dir) / f".sample-shares-{seed}"
    if dist.is_main:
        shutil.rmtree(shares, ignore_errors=True)
        shares.mkdir(parents=True)
    parallel.barrier(dist)
    np.savez(shares / f"rank{dist.rank:05d}.npz", indices=indices, images=images)
    parallel.barrier(dist)
    result = None
    if dist.is_main:
        result = merge_shares(shares, len(labels)), labels.numpy()
        shutil.rmtree(shares, ignore_errors=True)
    parallel.barrier(dist)
    return result


def merge_shares(folder: Path, num_samples: int) -> np.ndarray:
    """The images of every ``rank*.npz`` share in ``folder``, placed at their sample indices:
    ``uint8 [num_samples, H, W, C]``; a missing or duplicated index is a ``ValueError``."""
    out, seen = None, np.zeros(num_samples, dtype=bool)
    for f in sorted(folder.glob("rank*.npz")):
        with np.load(f) as share:
            idx, imgs = share["indices"], share["images"]
        if len(idx) == 0:
            continue
        if out is None:
            out = np.zeros((num_samples, *imgs.shape[1:]), dtype=np.uint8)
        if seen[idx].any():
            raise ValueError(f"sample indices computed twice (share {f.name})")
        out[idx], seen[idx] = imgs, True
    if out is None or not seen.all():
        raise ValueError(f"{(~seen).sum()} of {num_samples} samples are missing from the shares in {folder}")
    return out


OUTPUT_SUFFIXES = (".npz", ".png")  # sample archive, grid; a path ending in "/" is a folder of PNGs


def is_folder_output(out) -> bool:
    """Whether output ``out`` (as typed) names a folder of one PNG per sample: it ends in ``/``."""
    return str(out).endswith(("/", os.sep))


def check_outputs(outs) -> list[Path]:
    """Before sampling: each path of ``outs`` ends in ``.npz`` or ``.png`` and is not a folder, or
    ends in ``/`` and is a new or empty folder; and its folder can be written (``UsageError`` /
    ``StorageError`` naming the path otherwise)."""
    checked = []
    for out in outs:
        if is_folder_output(out):
            folder = Path(out)
            if folder.is_dir() and any(folder.iterdir()):
                raise UsageError(f"output folder {out} is not empty; give a new or empty folder for the "
                                 "per-sample PNGs (a folder read by FID tools must hold these samples only)")
            checked.append(check_writable_dir(folder, "output folder"))
        else:
            path = Path(out)
            if path.is_dir():
                raise StorageError(f"output {out} is a folder; give a file path such as {path / 'samples.npz'}, "
                                   f"or {out}/ for one PNG per sample")
            if path.suffix not in OUTPUT_SUFFIXES:
                raise UsageError(f"output {out} must end in .npz or .png (a sample archive, a grid), or "
                                 "in / (a folder of one PNG per sample)")
            checked.append(check_output_file(out, "output", OUTPUT_SUFFIXES))
    return checked


def write_outputs(outs, images: np.ndarray, labels: np.ndarray, grid_count: int = 100,
                  nrow: int | None = None) -> list[Path]:
    """Write each path of ``outs``: ``.npz`` -> all samples (ADM format); ``.png`` -> a grid of the
    first ``grid_count`` samples (enlarged so small images stay visible); ``DIR/`` -> one PNG per
    sample, ``{index:06d}_class{label}.png``. A full disk is a ``StorageError`` naming the file."""
    written = []
    for out in outs:
        folder = is_folder_output(out)
        out = Path(out)
        if not folder and out.suffix not in OUTPUT_SUFFIXES:
            raise UsageError(f"output {out} must end in .npz or .png (a sample archive, a grid), or "
                             "in / (a folder of one PNG per sample)")
        with writing("the samples", out, then="sample again"):
            if folder:
                written.append(save_images(out, images, labels))
            elif out.suffix == ".npz":
                written.append(write_npz(out, images, labels))
            else:
                shown = images[:grid_count]
                written.append(save_grid(out, shown, nrow=nrow, scale=max(1, 64 // shown.shape[1])))
    return written
