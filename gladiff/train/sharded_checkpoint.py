"""Sharded checkpoints: every process writes its own shards with ``torch.distributed.checkpoint``.

An FSDP run (``parallel: fsdp``) writes ``<run_dir>/checkpoints/step-XXXXXXXX.dcp/``, a folder of

- DCP's files (``.metadata`` and one ``__<rank>_0.distcp`` per process) for
  ``{"model", "ema", "optimizer"}``, the state dicts of ``get_state_dict``/``get_model_state_dict``:
  keyed by parameter name (the optimizer too), the same whatever the wrapping (plain, DDP, FSDP,
  activation checkpointing), each process saving only its shards;
- ``meta.pt`` (``torch.save``): everything else a ``.pt`` checkpoint holds (format, step, loss scale,
  data position, every rank's RNG states, config, model spec, data info, ``complete``).

The folder is written as ``.step-XXXXXXXX.dcp.tmp/``, ``meta.pt`` last, then renamed to its final
name by rank 0, so a crash mid-write never leaves a folder under a checkpoint's name and the
newest-valid logic of ``checkpoint`` keeps working (it also checks every shard file the metadata
names is there and long enough).

Loading reshards: DCP reads each process's slices from whatever shards hold them, so a checkpoint
written by N processes resumes in M (M = 1 means a plain, unsharded model), into FSDP or DDP, and
the full ``.pt`` of a DDP run resumes into FSDP (``load_training_state``). ``read_full_weights``
gives sampling the plain state dict of the model or its EMA.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
    set_state_dict,
)

from . import checkpoint, parallel, sharding

FORMAT = "gladiff-train-dcp-1"
SUFFIX = ".dcp"
META = "meta.pt"
# What meta.pt must hold: a .pt checkpoint's keys without the tensors, which live in the shards.
REQUIRED = tuple(k for k in checkpoint.REQUIRED if k not in ("model", "ema", "optimizer"))
_WRAPPER_PREFIX = "_checkpoint_wrapped_module."  # activation checkpointing's module-name prefix


def sharded_path(run_dir: str | Path, step: int) -> Path:
    return checkpoint.checkpoint_dir(run_dir) / f"step-{int(step):08d}{SUFFIX}"


# ----------------------------------------------------------------------------- writing
def save(run_dir: str | Path, step: int, position, rng: list, state, dist: parallel.Dist) -> Path:
    """Write the sharded checkpoint of ``step`` (a collective: every rank calls it) from the run's
    ``state`` (``loop.TrainState``), data ``position`` and the gathered per-rank ``rng`` states;
    returns its path on every rank."""
    final = sharded_path(run_dir, step)
    tmp = final.with_name(f".{final.name}.tmp")
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)  # left by a crash at this very step
        tmp.mkdir(parents=True)
    parallel.barrier(dist)
    model_sd, optim_sd = get_state_dict(state.model, state.optimizer)
    with _single_process_is_meant():  # returns once every rank's shards and the metadata are written
        dcp.save({"model": model_sd, "ema": get_model_state_dict(state.ema.model), "optimizer": optim_sd},
                 checkpoint_id=tmp)
    if dist.is_main:
        meta = {"format": FORMAT, "step": int(step), "scaler": state.precision.state_dict(),
                "data": position.state_dict(), "rng": rng, "config": state.cfg.to_dict(),
                "model_spec": state.spec, "data_info": state.info, "complete": True}
        checkpoint.atomic_save(meta, tmp / META)
        _replace_dir(tmp, final)
        checkpoint.prune(run_dir, state.cfg.keep_ckpts)
    parallel.barrier(dist)
    return final


@contextlib.contextmanager
def _single_process_is_meant():
    """Without a process group DCP saves/loads in this process alone, as meant here (one process =
    a plain model); silence its warning that it assumes so."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"torch\.distributed is .*assuming the intent")
        yield


def _replace_dir(src: Path, dst: Path) -> None:
    """Rename folder ``src`` to ``dst``, replacing an older ``dst`` (a corrupt checkpoint of the same
    step that resuming skipped); the rename is made durable where the OS allows."""
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(src, dst)
    checkpoint.fsync_dir(dst.parent)


# ----------------------------------------------------------------------------- reading
def read(path: str | Path) -> dict:
    """The ``meta.pt`` of a sharded checkpoint folder plus ``"sharded": path``; ``ValueError`` if
    the folder is incomplete (no metadata, a missing or short shard file) or foreign."""
    path = Path(path)
    meta_file = path / META
    if not meta_file.is_file():
        raise ValueError(f"sharded checkpoint {path} is incomplete (no {META})")
    meta = checkpoint.load_record(meta_file, path, FORMAT, REQUIRED, kind="sharded ")
    _check_shards(path)
    return {**meta, "sharded": path}


def _check_shards(path: Path) -> None:
    """``ValueError`` unless DCP's metadata reads and every byte range it names exists on disk."""
    try:
        md = FileSystemReader(str(path)).read_metadata()
    except Exception as err:
        raise ValueError(f"sharded checkpoint {path} has no readable DCP metadata "
                         f"({type(err).__name__}: {err})") from err
    need: dict[str, int] = {}
    for info in (md.storage_data or {}).values():
        rel = getattr(info, "relative_path", None)
        if rel is not None:
            need[rel] = max(need.get(rel, 0), int(info.offset) + int(info.length))
    for rel, size in need.items():
        f = path / rel
        if not f.is_file() or f.stat().st_size < size:
            raise ValueError(f"sharded checkpoint {path} is incomplete ({rel} is missing or truncated)")


def read_full_weights(path: str | Path, which: str = "ema") -> dict[str, torch.Tensor]:
    """The plain (unsharded, CPU) state dict of ``which`` (``"ema"`` or ``"model"``) stored in the
    sharded checkpoint folder ``path``. Under ``torchrun`` every rank must call it (DCP loads
    collectively); every rank gets the whole state dict."""
    md = FileSystemReader(str(path)).read_metadata()
    prefix = f"{which}."
    # DCP flattens {"ema": {"blocks.0.w": t}} to "ema.blocks.0.w": allocate exactly those tensors.
    weights = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in md.state_dict_metadata.items()
               if k.startswith(prefix) and isinstance(m, TensorStorageMetadata)}
    if not weights:
        raise ValueError(f"sharded checkpoint {path} holds no {which!r} weights")
    with _single_process_is_meant():
        dcp.load(weights, checkpoint_id=str(path))
    return {k[len(prefix):]: v for k, v in weights.items()}


# ----------------------------------------------------------------------------- loading into a run
def handles(saved: dict, model: torch.nn.Module) -> bool:
    """Whether loading ``saved`` into ``model`` needs the state-dict API of this module: a sharded
    checkpoint (into anything), or anything into a sharded model."""
    return "sharded" in saved or sharding.is_sharded(model)


def load_training_state(saved: dict, state) -> None:
    """Load the model, EMA and optimizer state of a checkpoint read by ``checkpoint.read_checkpoint``
    into the run's ``state`` (``loop.TrainState``), resharding as needed (a collective: every rank
    calls it). ``saved`` is a sharded checkpoint (any number of writers, into a plain, DDP or FSDP
    model) or a full ``.pt`` (into an FSDP model; every rank holds it whole)."""
    if "sharded" in saved:
        # Templates in this run's layout (get_state_dict also creates the optimizer's state
        # tensors, empty before the first step); DCP fills each rank's slices from the shards.
        model_sd, optim_sd = get_state_dict(state.model, state.optimizer)
        target = {"model": model_sd, "ema": get_model_state_dict(state.ema.model), "optimizer": optim_sd}
        with _single_process_is_meant():
            dcp.load(target, checkpoint_id=str(saved["sharded"]))
        set_state_dict(state.model, state.optimizer, model_state_dict=target["model"],
                       optim_state_dict=target["optimizer"])
        set_model_state_dict(state.ema.model, target["ema"])
        return
    full = StateDictOptions(full_state_dict=True)
    set_model_state_dict(state.model, saved["model"], options=full)
    set_model_state_dict(state.ema.model, saved["ema"], options=full)
    set_optimizer_state_dict(state.model, state.optimizer, optimizer_by_name(saved["optimizer"], state.model),
                             options=full)


def optimizer_by_name(optim_state: dict, model: torch.nn.Module) -> dict:
    """``optimizer.state_dict()`` (parameters numbered in ``model.parameters()`` order) with the
    numbers replaced by parameter names, the form the state-dict API loads."""
    names = [n.replace(_WRAPPER_PREFIX, "") for n, _ in model.named_parameters()]
    numbered = [i for g in optim_state["param_groups"] for i in g["params"]]
    if sorted(numbered) != list(range(len(names))):
        raise ValueError(f"the checkpoint's optimizer holds {len(numbered)} parameters, the model has "
                         f"{len(names)}: it was written for a different model")
    return {"state": {names[i]: s for i, s in optim_state["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]}
                             for g in optim_state["param_groups"]]}
