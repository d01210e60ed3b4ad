"""Process groups: one process, or many under ``torchrun`` (gloo on CPU, NCCL on GPU).

The training loop and the sampler only ask this module who they are (``Dist``), wrap the model, and
agree on flags; beyond that only ``sharding`` (FSDP2) and ``sharded_checkpoint`` (DCP) touch
``torch.distributed``.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as td
from torch.distributed.fsdp import FSDPModule
from torch.nn.parallel import DistributedDataParallel

from gladiff.models import compile_model

from .config import COMPILE

# The torch.compile backend of compiled training. "inductor" is torch.compile's own default; the tests
# set "aot_eager" (AOT autograd, no code generation) to run in seconds on a CPU without a C++ compiler.
# Not a config field on purpose: nothing but a test needs another backend.
COMPILE_BACKEND = "inductor"


@dataclass(frozen=True)
class Dist:
    """Who this process is: ``rank`` of ``world_size``, on ``device``."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(device: str = "auto", local_rank: int = 0) -> torch.device:
    """``"auto"`` -> this process's CUDA device when there is one, else the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{local_rank}"
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no CUDA device")
    return device


def init_distributed(device: str = "auto") -> Dist:
    """Join the process group ``torchrun`` describes in the environment (``WORLD_SIZE > 1``), or
    describe a single process. Safe to call when a group is already initialised."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = pick_device(device, local_rank)
    if world_size > 1 and not td.is_initialized():
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        backend = "nccl" if dev.type == "cuda" else "gloo"
        td.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30),
                              **({"device_id": dev} if dev.type == "cuda" else {}))
    return Dist(rank=rank, world_size=world_size, local_rank=local_rank, device=dev)


def shutdown(dist: Dist, wait: bool = True) -> None:
    """Leave the process group (no-op for one process); ``wait`` for the other ranks first."""
    if dist.distributed and td.is_initialized():
        if wait:
            td.barrier()
        td.destroy_process_group()


def wrap_model(model: torch.nn.Module, dist: Dist, compile: str = "none") -> torch.nn.Module:
    """The network that runs the training forward pass (``net(x, t, y)``): ``model`` compiled as
    ``compile`` says (``"none"``, or a scope of ``gladiff.models.compile_model``: ``"model"``,
    ``"blocks"``), with DDP around it when there are several processes and FSDP did not already shard
    it (a sharded model synchronises its own gradients).

    Keep using ``model`` itself for the optimizer, the EMA and checkpoints: ``"model"`` returns a
    ``torch.compile`` wrapper whose state-dict keys would carry an ``_orig_mod.`` prefix, ``"blocks"``
    compiles ``model``'s blocks in place (parameters and keys unchanged).

    Order. DDP: the inner module is compiled and DDP wraps the compiled module, as PyTorch's "Where to
    apply torch.compile?" page (torch.compiler programming model) documents: torch.compile does not
    handle distributed wrappers such as DDP well, so compile the module given to the wrapper. (Older
    DDP docstrings said the reverse; current PyTorch's no longer does.) The compiled module still runs
    inside DDP's forward, where Dynamo splits its graph at DDP's gradient buckets (DDPOptimizer), so
    the all-reduces overlap the backward as in eager.
    FSDP2: ``sharding.prepare`` has already applied ``fully_shard`` to every block and the root, so
    the blocks are compiled after sharding. In-place ``Module.compile`` compiles the block's
    ``_call_impl``, which looks FSDP's forward hooks up on every call, so those hooks (excluded from
    tracing by FSDP2) run around each compiled block. Under FSDP, "model" breaks its graph at every
    block boundary (those hooks) and so cannot fuse across blocks: "blocks" is the scope to use there.
    """
    if compile not in COMPILE:
        raise ValueError(f"compile must be one of {COMPILE}, got {compile!r}")
    if compile == "auto":  # decided while training: the loop passes "none" and AutoCompile compiles
        raise ValueError("compile='auto' is resolved by gladiff.train.autocompile, not by wrap_model")
    net = model if compile == "none" else compile_model(model, compile, backend=COMPILE_BACKEND)
    if not dist.distributed or isinstance(model, FSDPModule):
        return net
    ids = [dist.device.index] if dist.device.type == "cuda" else None
    return DistributedDataParallel(net, device_ids=ids)


def any_flag(dist: Dist, *flags: bool) -> list[bool]:
    """Each flag OR-ed over all processes, so every rank takes the same branch (one all-reduce)."""
    if not dist.distributed:
        return [bool(f) for f in flags]
    t = torch.tensor([float(bool(f)) for f in flags], device=dist.device)
    td.all_reduce(t, op=td.ReduceOp.MAX)
    return [bool(v) for v in t.tolist()]


def all_gather_objects(dist: Dist, obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (``[obj]`` for one process)."""
    if not dist.distributed:
        return [obj]
    out = [None] * dist.world_size
    td.all_gather_object(out, obj)
    return out


def broadcast_object(dist: Dist, obj):
    """Rank 0's ``obj`` on every rank."""
    if not dist.distributed:
        return obj
    box = [obj]
    td.broadcast_object_list(box, src=0)
    return box[0]


def barrier(dist: Dist) -> None:
    if dist.distributed:
        td.barrier()


def mean_over_ranks(dist: Dist, value: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over all processes (the tensor itself for one process)."""
    if not dist.distributed:
        return value
    value = value.detach().clone()
    td.all_reduce(value, op=td.ReduceOp.SUM)
    return value / dist.world_size
