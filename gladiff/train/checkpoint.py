"""Checkpoints that survive crashes: atomic writes, newest-valid discovery, strict loading.

A checkpoint is one ``torch.save`` file ``<run_dir>/checkpoints/step-XXXXXXXX.pt`` holding::

    {"format": FORMAT, "step": int, "model": state_dict, "ema": state_dict, "optimizer": state_dict,
     "scaler": state_dict | None, "data": {"epoch", "index"}, "rng": [per-rank RNG states],
     "config": resolved config dict, "model_spec": {...}, "data_info": {...}, "complete": True}

It is written to a temporary file in the same folder, flushed and fsync-ed, then renamed over the
final name (``os.replace`` is atomic on POSIX), so a crash or a full disk mid-write leaves every
earlier checkpoint untouched. Everything inside is a tensor or plain Python data, so files load with
``weights_only=True``.

FSDP runs write sharded checkpoint folders ``step-XXXXXXXX.dcp/`` instead (``sharded_checkpoint``);
listing, validation, pruning and ``model_weights`` here treat both kinds alike.
"""
from __future__ import annotations

import os
import random
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

FORMAT = "gladiff-train-1"
_NAME = re.compile(r"^step-(\d{8,})\.(?:pt|dcp)$")  # .dcp: a sharded checkpoint folder
REQUIRED = ("format", "step", "model", "ema", "optimizer", "data", "rng", "config", "model_spec",
            "data_info", "complete")


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_path(run_dir: str | Path, step: int) -> Path:
    return checkpoint_dir(run_dir) / f"step-{int(step):08d}.pt"


# ----------------------------------------------------------------------------- writing
def atomic_save(obj, path: str | Path) -> Path:
    """``torch.save(obj)`` to ``path`` via a temporary file + fsync + rename; returns ``path``.

    On any failure (disk full, killed process raising, ...) the temporary file is removed and
    ``path`` (and its siblings) are left as they were.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (its directory entry), where the OS allows opening
    a folder; a no-op elsewhere."""
    try:
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def prune(run_dir: str | Path, keep: int) -> None:
    """Delete all but the ``keep`` newest checkpoints (``keep == 0`` keeps all), and stale temp files."""
    folder = checkpoint_dir(run_dir)
    for stale in folder.glob(".step-*.pt.tmp-*"):
        stale.unlink(missing_ok=True)
    for stale in [*folder.glob(".step-*.dcp.tmp"), *folder.glob(".step-*.dcp.old")]:
        shutil.rmtree(stale, ignore_errors=True)
    if keep <= 0:
        return
    for old in list_checkpoints(run_dir)[keep:]:
        if old.is_dir():  # a sharded checkpoint folder
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- finding / reading
def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Checkpoint files of a run, newest (highest step) first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def read_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load and validate one checkpoint file; ``ValueError`` if it is truncated, corrupt or foreign."""
    path = Path(path)
    if path.is_dir():
        from .sharded_checkpoint import read

        return read(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return load_record(path, path, FORMAT, REQUIRED, map_location=map_location)


def load_record(file: Path, path: Path, fmt: str, required, kind: str = "", map_location="cpu") -> dict:
    """Load the dict saved in ``file`` (of the checkpoint ``path``) and check that it is a complete
    record of format ``fmt`` holding every key of ``required``; ``ValueError`` naming what is wrong.
    ``kind`` qualifies the checkpoint in messages (e.g. ``"sharded "``)."""
    try:
        state = torch.load(file, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated zip, bad pickle, ... all mean "not usable"
        raise ValueError(f"checkpoint {file} cannot be read ({type(err).__name__}: {err})") from err
    if not isinstance(state, dict) or state.get("format") != fmt:
        raise ValueError(f"{path} is not a gladiff {kind}training checkpoint (format {fmt!r})")
    missing = [k for k in required if k not in state]
    if missing or state.get("complete") is not True:
        raise ValueError(f"{kind}checkpoint {path} is incomplete (missing {missing})")
    return state


def newest_valid_checkpoint(run_dir: str | Path, map_location="cpu") -> tuple[Path, dict] | None:
    """``(path, state)`` of the newest checkpoint that loads and validates, or ``None`` if none.

    Unreadable newer files (a truncated write, a corrupted disk block) are skipped with a warning.
    """
    for path in list_checkpoints(run_dir):
        try:
            return path, read_checkpoint(path, map_location)
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
    run_dir = p.parent if p.name == "checkpoints" and not (p / "checkpoints").is_dir() else p
    found = newest_valid_checkpoint(run_dir)
    if found is None:
        raise ValueError(f"no valid checkpoint under {p}")
    return found[0]


# ----------------------------------------------------------------------------- model state
def model_weights(state: dict, which: str = "ema") -> dict:
    """The plain state dict of ``which`` (``"ema"`` or ``"model"``) of a checkpoint read by
    ``read_checkpoint``, whether it is a ``.pt`` file or a sharded folder (then loaded from the
    shards; under ``torchrun`` every rank must call it)."""
    if "sharded" in state:
        from .sharded_checkpoint import read_full_weights

        return read_full_weights(state["sharded"], which)
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
