"""Checkpoints that survive crashes and damage: atomic writes, checksums, newest-valid discovery,
strict loading, pruning that never loses the last good checkpoint.

A checkpoint is one ``torch.save`` file ``<run_dir>/checkpoints/step-XXXXXXXX.pt`` holding::

    {"format": FORMAT, "step": int, "model": state_dict, "ema": state_dict, "optimizer": state_dict,
     "scaler": state_dict | None, "data": {"epoch", "index"}, "rng": [per-rank RNG states],
     "config": resolved config dict, "model_spec": {...}, "data_info": {...}, "complete": True}

It is written to a temporary file in the same folder, flushed and fsync-ed, its SHA-256 recorded in
``step-XXXXXXXX.pt.sha256``, then renamed over the final name (``os.replace`` is atomic on POSIX),
so a crash or a full disk mid-write leaves every earlier checkpoint untouched
(``checkpoint_files``). Loading verifies the checksum first; everything inside is a tensor or plain
Python data, so files load with ``weights_only=True``.

FSDP runs write sharded checkpoint folders ``step-XXXXXXXX.dcp/`` instead (``sharded_checkpoint``);
listing, validation, pruning and ``model_weights`` here treat both kinds alike.
"""
from __future__ import annotations

import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from . import sharded_checkpoint
# atomic_save, checkpoint_dir, fsync_dir, REQUIRED and UnsafeCheckpointError are used as checkpoint.X too.
from .checkpoint_files import (REQUIRED, SIDECAR, UnsafeCheckpointError, atomic_save, checkpoint_dir,
                               fsync_dir, load_record, note_unverified, sidecar, verify_sums)

FORMAT = "gladiff-train-1"
_NAME = re.compile(r"^step-(\d{8,})\.(?:pt|dcp)$")  # .dcp: a sharded checkpoint folder


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step-{int(step):08d}.pt"


# ----------------------------------------------------------------------------- pruning
def prune(run_dir: str | Path, keep: int, just_written: str | Path | None = None) -> None:
    """Delete stale temporary files and every checkpoint older than the ``keep`` newest *readable*
    ones (``keep == 0`` keeps all). ``just_written`` (the checkpoint this run just wrote) is never
    deleted and counts as readable without being read again; unreadable checkpoints newer than the
    ``keep``-th readable one are left alone, so a damaged newest file can never make pruning delete
    the last good checkpoint."""
    folder = checkpoint_dir(run_dir)
    for stale in [*folder.glob(".step-*.pt.tmp-*"), *folder.glob(".step-*.pt.sha256.tmp-*")]:
        stale.unlink(missing_ok=True)
    for stale in [*folder.glob(".step-*.dcp.tmp"), *folder.glob(".step-*.dcp.old")]:
        shutil.rmtree(stale, ignore_errors=True)
    for orphan in folder.glob(f"step-*.pt{SIDECAR}"):  # its file was never renamed into place
        if not orphan.with_name(orphan.name[: -len(SIDECAR)]).exists():
            orphan.unlink(missing_ok=True)
    if keep <= 0:
        return
    just_written = Path(just_written) if just_written is not None else None
    readable = 0
    for path in list_checkpoints(run_dir):  # newest first
        if path == just_written:
            readable += 1
        elif readable >= keep:
            _remove(path)
        elif _readable(path):
            readable += 1


def _readable(path: Path) -> bool:
    """Whether the checkpoint ``path`` would load: its checksums match (or, without checksums, it
    reads and validates completely)."""
    try:
        if verify_checkpoint(path) is None:
            with warnings.catch_warnings():  # the note about missing checksums: said on load
                warnings.simplefilter("ignore")
                read_checkpoint(path)
        return True
    except ValueError:
        return False


def _remove(path: Path) -> None:
    if path.is_dir():  # a sharded checkpoint folder
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
        sidecar(path).unlink(missing_ok=True)


# ----------------------------------------------------------------------------- finding / reading
def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint files of a run, newest (highest step) first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def verify_checkpoint(path: str | Path) -> set[str] | None:
    """Check the checkpoint's recorded SHA-256 checksums (every file of a sharded folder); returns
    the names of the files verified, ``None`` if it has no checksums (written by an older gladiff).
    ``ValueError`` naming the file if one differs or is missing."""
    path = Path(path)
    if path.is_dir():
        return verify_sums(path / sharded_checkpoint.SUMS, path)
    return verify_sums(sidecar(path), path, only=path.name)


def read_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load and validate one checkpoint file; ``ValueError`` if it is truncated, damaged (checksum),
    corrupt or foreign, ``UnsafeCheckpointError`` if it asks to run code."""
    path = Path(path)
    if path.is_dir():
        return sharded_checkpoint.read(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if verify_checkpoint(path) is None:  # before torch.load: damage is reported as damage
        note_unverified(path)
    return load_record(path, path, FORMAT, REQUIRED, map_location=map_location)


def newest_valid_checkpoint(run_dir: str | Path, map_location="cpu") -> tuple[Path, dict] | None:
    """``(path, state)`` of the newest checkpoint that loads and validates, or ``None`` if none.

    Unreadable or damaged newer files (a truncated write, a corrupted disk block) are skipped with a
    warning. A file that asks to run code is not skipped: ``UnsafeCheckpointError``.
    """
    for path in list_checkpoints(run_dir):
        try:
            return path, read_checkpoint(path, map_location)
        except UnsafeCheckpointError:
            raise
        except ValueError as err:
            warnings.warn(f"skipping unusable checkpoint: {err}", stacklevel=2)
    return None


def resolve_checkpoint(path_or_run: str | Path) -> Path:
    """A checkpoint file as given, or the newest valid one of a run folder (or of its
    ``checkpoints/`` folder); ``ValueError`` if the folder holds none."""
    p = Path(path_or_run)
    if p.is_file() or (p.is_dir() and _NAME.match(p.name)):
        return p
    if not p.is_dir():
        raise FileNotFoundError(f"checkpoint or run folder {p} does not exist")
    found = newest_valid_checkpoint(run_dir_of(p))
    if found is None:
        raise ValueError(f"no valid checkpoint under {p}")
    return found[0]


def run_dir_of(path: str | Path) -> Path:
    """The run folder of a run folder, of its ``checkpoints/`` folder or of a checkpoint in it."""
    p = Path(path)
    if _NAME.match(p.name) and p.parent.name == "checkpoints":
        return p.parent.parent
    return p.parent if p.name == "checkpoints" and not (p / "checkpoints").is_dir() else p


# ----------------------------------------------------------------------------- model state
def model_weights(state: dict, which: str = "ema") -> dict:
    """The plain state dict of ``which`` (``"ema"`` or ``"model"``) of a checkpoint read by
    ``read_checkpoint``, whether it is a ``.pt`` file or a sharded folder (then loaded from the
    shards; under ``torchrun`` every rank must call it)."""
    if "sharded" in state:
        return sharded_checkpoint.read_full_weights(state["sharded"], which)
    return state[which]


def load_model_state(model: torch.nn.Module, state: dict, what: str = "checkpoint") -> None:
    """``model.load_state_dict(state)``, but a mismatch is a ``ValueError`` that says what differs."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: {what} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} parameters missing from the {what} (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected parameters (e.g. {unexpected[:3]})")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatches (e.g. {shapes[:3]})")
        raise ValueError(f"the {what} was written for a different model: " + "; ".join(parts))
    model.load_state_dict(state)


def check_model_spec(saved: dict, current: dict, path: str | Path = "checkpoint") -> None:
    """``ValueError`` if a checkpoint's model spec (name, sizes, overrides) differs from the run's."""
    diff = {k: (saved.get(k), current.get(k)) for k in set(saved) | set(current)
            if saved.get(k) != current.get(k)}
    if diff:
        detail = ", ".join(f"{k}: checkpoint {a!r} vs run {b!r}" for k, (a, b) in sorted(diff.items()))
        raise ValueError(f"{path} was written for a different model ({detail}); "
                         "start a new run folder or use the same model settings")


# ----------------------------------------------------------------------------- RNG states
def capture_rng() -> dict:
    """This process's RNG states (torch CPU, every CUDA device, numpy, python) as plain data."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": _py_state_to_data(random.getstate()),
    }


def restore_rng(state: dict) -> None:
    """Inverse of ``capture_rng``."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(_py_state_from_data(state["python"]))


def _py_state_to_data(st):
    version, internal, gauss = st
    return [version, torch.tensor(internal, dtype=torch.int64), gauss]


def _py_state_from_data(data):
    version, internal, gauss = data
    return (version, tuple(int(v) for v in internal.tolist()), gauss)
