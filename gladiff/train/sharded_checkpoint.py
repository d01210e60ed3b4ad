"""Sharded checkpoints: every process writes its own shards with ``torch.distributed.checkpoint``.

An FSDP run (``parallel: fsdp``) writes ``<run_dir>/checkpoints/step-XXXXXXXX.dcp/``, a folder of

- DCP's files (``.metadata`` and one ``__<rank>_0.distcp`` per process) for
  ``{"model", "ema", "optimizer"}``, the state dicts of ``get_state_dict``/``get_model_state_dict``:
  keyed by parameter name (the optimizer too), the same whatever the wrapping (plain, DDP, FSDP,
  activation checkpointing), each process saving only its shards;
- ``meta.pt`` (``torch.save``): everything else a ``.pt`` checkpoint holds (format, step, loss scale,
  data position, every rank's RNG states, config, model spec, data info, ``complete``);
- ``SHA256SUMS``: the SHA-256 of every other file (``checkpoint_files``), each rank hashing its own
  shards.

The folder is written as ``.step-XXXXXXXX.dcp.tmp/``, ``meta.pt`` and ``SHA256SUMS`` last, then
renamed to its final name by rank 0, so a crash mid-write never leaves a folder under a checkpoint's
name and the newest-valid logic of ``checkpoint`` keeps working (it also checks the checksums and
that every shard file the metadata names is there and long enough).

Reading never runs code from the folder. DCP's own reader unpickles ``.metadata`` with ``pickle``
and its planner unpickles non-tensor values (the optimizer's hyperparameters) with
``torch.load(weights_only=False)``; here the metadata goes through an unpickler that admits only the
types DCP writes into it, and non-tensor values through ``torch.load(weights_only=True)``. A file
that asks for anything else is refused with ``UnsafeCheckpointError`` naming it.

Loading reshards: DCP reads each process's slices from whatever shards hold them, so a checkpoint
written by N processes resumes in M (M = 1 means a plain, unsharded model), into FSDP or DDP, and
the full ``.pt`` of a DDP run resumes into FSDP (``load_training_state``). ``read_full_weights``
gives sampling the plain state dict of the model or its EMA.
"""
from __future__ import annotations

import contextlib
import io
import os
import pathlib
import pickle
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta, TensorStorageMetadata
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
    set_state_dict,
)

from . import checkpoint_files, parallel, sharding
from .checkpoint_files import SUMS, UnsafeCheckpointError, atomic_save, sha256_file

FORMAT = "gladiff-train-dcp-1"
SUFFIX = ".dcp"
META = "meta.pt"
DCP_METADATA = ".metadata"  # DCP's own name for it
# What meta.pt must hold: a .pt checkpoint's keys without the tensors, which live in the shards.
REQUIRED = tuple(k for k in checkpoint_files.REQUIRED if k not in ("model", "ema", "optimizer"))
_WRAPPER_PREFIX = "_checkpoint_wrapped_module."  # activation checkpointing's module-name prefix


def sharded_path(run_dir: str | Path, step: int) -> Path:
    return checkpoint_files.checkpoint_dir(run_dir) / f"step-{int(step):08d}{SUFFIX}"


# ----------------------------------------------------------------------------- writing
def save(run_dir: str | Path, step: int, position, rng: list, state, dist: parallel.Dist) -> Path:
    """Write the sharded checkpoint of ``step`` (a collective: every rank calls it) from the run's
    ``state`` (``loop.TrainState``), data ``position`` and the gathered per-rank ``rng`` states;
    returns its path on every rank. Pruning older checkpoints is the caller's (``checkpoint.prune``)."""
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
    # Every rank hashes the shard files it wrote (DCP names them __<rank>_<n>.distcp), in parallel.
    digests = parallel.all_gather_objects(
        dist, {f.name: sha256_file(f) for f in tmp.glob(f"__{dist.rank}_*.distcp")})
    if dist.is_main:
        meta = {"format": FORMAT, "step": int(step), "scaler": state.precision.state_dict(),
                "data": position.state_dict(), "rng": rng, "config": state.cfg.to_dict(),
                "model_spec": state.spec, "data_info": state.info, "complete": True}
        atomic_save(meta, tmp / META)
        sums = {name: digest for d in digests for name, digest in d.items()}
        sums.update({f.name: sha256_file(f) for f in tmp.iterdir()  # .metadata, meta.pt, any other
                     if f.is_file() and f.name not in sums and f.name != SUMS and ".tmp-" not in f.name})
        checkpoint_files.write_sums(tmp / SUMS, sums)
        _replace_dir(tmp, final)
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
    checkpoint_files.fsync_dir(dst.parent)


# ----------------------------------------------------------------------------- reading
def read(path: str | Path) -> dict:
    """The ``meta.pt`` of a sharded checkpoint folder plus ``"sharded": path``; ``ValueError`` if
    the folder is incomplete (no metadata, a missing or short shard file), damaged (a checksum
    differs) or foreign; ``UnsafeCheckpointError`` if its DCP metadata asks to run code."""
    path = Path(path)
    meta_file = path / META
    if not meta_file.is_file():
        raise ValueError(f"sharded checkpoint {path} is incomplete (no {META})")
    verified = checkpoint_files.verify_sums(path / SUMS, path)  # before anything is unpickled
    if verified is None:
        checkpoint_files.note_unverified(path)
    meta = checkpoint_files.load_record(meta_file, path, FORMAT, REQUIRED, kind="sharded ")
    _check_shards(path, verified)
    return {**meta, "sharded": path}


def _check_shards(path: Path, verified: set[str] | None) -> None:
    """``ValueError`` unless DCP's metadata reads and every byte range it names exists on disk (and,
    where ``verified`` names the files whose checksums matched, is among them)."""
    try:
        md = SafeReader(path).read_metadata()
    except UnsafeCheckpointError:
        raise
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
    if verified is not None:
        unchecked = sorted({DCP_METADATA, META, *need} - verified)
        if unchecked:
            raise ValueError(f"sharded checkpoint {path} is incomplete: {SUMS} has no checksum for {unchecked}")


def read_full_weights(path: str | Path, which: str = "ema") -> dict[str, torch.Tensor]:
    """The plain (unsharded, CPU) state dict of ``which`` (``"ema"`` or ``"model"``) stored in the
    sharded checkpoint folder ``path``. Under ``torchrun`` every rank must call it (DCP loads
    collectively); every rank gets the whole state dict."""
    md = SafeReader(path).read_metadata()
    prefix = f"{which}."
    # DCP flattens {"ema": {"blocks.0.w": t}} to "ema.blocks.0.w": allocate exactly those tensors.
    weights = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in md.state_dict_metadata.items()
               if k.startswith(prefix) and isinstance(m, TensorStorageMetadata)}
    if not weights:
        raise ValueError(f"sharded checkpoint {path} holds no {which!r} weights")
    _load(weights, Path(path))
    return {k[len(prefix):]: v for k, v in weights.items()}


# What torch.distributed.checkpoint pickles into ``.metadata`` (torch 2.4 to 2.13): its metadata
# dataclasses, ``_StorageInfo`` (where each item lies in which shard file), torch.Size, dtypes,
# layouts and the checkpoint's path. Nothing here runs code when called with pickled arguments.
_METADATA_TYPES = {
    "torch.distributed.checkpoint.metadata": {"Metadata", "StorageMeta", "TensorStorageMetadata",
                                              "BytesStorageMetadata", "ChunkStorageMetadata",
                                              "TensorProperties", "MetadataIndex", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},  # a layout by its name
    "torch": {"Size"},  # and dtypes, layouts, memory formats: see find_class
    "collections": {"OrderedDict"},
    "builtins": {"set", "frozenset"},
}
# The checkpoint's path (StorageMeta.checkpoint_id) as a pure path: it is only a name here, and a
# Windows path must read on Linux and the other way round.
_PATHS = {"PosixPath": pathlib.PurePosixPath, "PurePosixPath": pathlib.PurePosixPath,
          "WindowsPath": pathlib.PureWindowsPath, "PureWindowsPath": pathlib.PureWindowsPath}


class _MetadataUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that admits only ``_METADATA_TYPES``; anything else (``os.system``,
    ``builtins.eval``, ...) is an ``UnsafeCheckpointError`` naming the file."""

    def __init__(self, f, file: Path):
        super().__init__(f)
        self.file = file

    def find_class(self, module, name):
        if name in _METADATA_TYPES.get(module, ()):
            return super().find_class(module, name)
        if module in ("pathlib", "pathlib._local") and name in _PATHS:
            return _PATHS[name]
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout,
                                                                         torch.memory_format)):
            return getattr(torch, name)
        raise UnsafeCheckpointError(
            f"refusing {self.file}: it asks to load {module}.{name}, which the metadata of a "
            "torch.distributed.checkpoint checkpoint never holds; a crafted file runs code when it is "
            "unpickled, so nothing of it was loaded. Only use this run folder if you trust its source.")


class SafeReader(FileSystemReader):
    """DCP's file reader, with the ``.metadata`` pickle read by ``_MetadataUnpickler``. ``dcp.load``
    reads the metadata again through its reader, so every load here passes one of these. A refusal
    is also kept in ``refused``: ``dcp.load`` turns it into an ``AssertionError`` of its own."""

    refused: UnsafeCheckpointError | None = None

    def read_metadata(self, *args, **kwargs) -> Metadata:
        rank = kwargs.get("rank")  # DCP's fallback to a rank's own metadata file
        file = Path(self.path) / (DCP_METADATA if rank is None else f"__{rank}{DCP_METADATA}")
        with open(file, "rb") as f:
            try:
                md = _MetadataUnpickler(f, file).load()
            except UnsafeCheckpointError as err:
                self.refused = err
                raise
        if not isinstance(md, Metadata):
            raise ValueError(f"{file} holds a {type(md).__name__}, not DCP metadata")
        if getattr(md, "storage_meta", None) is None:  # as DCP's reader does
            md.storage_meta = StorageMeta()
        md.storage_meta.load_id = self.load_id
        return md


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's load planner, with non-tensor values (``torch.save``-d into the shards, e.g. the
    optimizer's learning rate and betas) read by ``torch.load(weights_only=True)``."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        try:
            obj = torch.load(value, weights_only=True)
        except pickle.UnpicklingError as err:
            info = self.metadata.storage_data.get(read_item.storage_index)
            file = self.path / getattr(info, "relative_path", "?")
            raise UnsafeCheckpointError(
                f"refusing {file}: its value {read_item.dest_index.fqn!r} is a pickle that is not plain "
                f"data (a crafted file runs code when it is unpickled), so it was not loaded ({err})") from None
        # DCP's planner unpickles with weights_only=False: hand it only what passed the check above.
        safe = io.BytesIO()
        torch.save(obj, safe)
        safe.seek(0)
        super().load_bytes(read_item, safe)


def _load(target: dict, path: Path) -> None:
    """``dcp.load`` of ``target`` from the folder ``path`` through ``SafeReader`` and
    ``SafeLoadPlanner``; a refused file is raised as the ``UnsafeCheckpointError`` it is, not
    wrapped in DCP's per-rank report."""
    reader = SafeReader(path)
    try:
        with _single_process_is_meant():
            dcp.load(target, storage_reader=reader, planner=SafeLoadPlanner(path))
    except CheckpointException as err:  # a BaseException, one (exception, traceback) per failed rank
        failures = [f[0] if isinstance(f, tuple) else f for f in err.failures.values()]
        for exc in [reader.refused, *failures]:
            if isinstance(exc, UnsafeCheckpointError):
                raise exc from None
        detail = "; ".join(f"{type(exc).__name__}: {exc}" for exc in failures)
        raise ValueError(f"sharded checkpoint {path} cannot be loaded ({detail})") from err


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
        _load(target, Path(saved["sharded"]))
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
