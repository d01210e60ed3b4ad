"""Beyond DDP: FSDP2 sharding and activation checkpointing, both from PyTorch itself.

- ``checkpoint_blocks(model)``: each transformer block (``model.blocks``) is wrapped in
  ``checkpoint_wrapper`` (non-reentrant ``torch.utils.checkpoint``), so its activations are
  recomputed in the backward pass instead of kept. Works for one process, DDP and FSDP; state-dict
  keys do not change (the wrapper strips its prefix on save and adds it on load).
- ``shard(model, mesh, dtype)``: ``fully_shard`` on every block, then on the root. Parameters,
  gradients and (since the optimizer is built on the sharded parameters) optimizer state are
  ``DTensor`` shards of ``1/world_size`` each.
- ``prepare(...)``: what the training loop calls; it shards the EMA copy the same way, so the
  EMA lives as DTensor shards next to the parameters and ``EMA.update`` lerps shard into shard.
- ``FullCopy``: a plain copy of a sharded module on rank 0 (for the sample grids only rank 0 draws).

Mixed precision under FSDP stays consistent with ``Precision`` (autocast, float32 master weights):
the forward pass still runs under autocast, and ``MixedPrecisionPolicy`` only decides the dtype in
which a block's parameters are all-gathered (the autocast dtype: the dtype autocast would cast them
to anyway, at half the communication) while gradients are reduce-scattered in float32 and the
sharded master weights, optimizer state and EMA stay float32. Inputs are not cast
(``cast_forward_inputs=False``), so the residual stream and the timesteps keep autocast's dtypes,
and the root's own parameters (embedders, positions, final layer) are gathered in float32, so the
timestep/label embeddings and positions see the same precision as without FSDP. The one parameter
used outside an autocast-cast op inside a block, the GLA output-norm weight, is rounded to the
autocast dtype under FSDP (a relative difference below 2**-8 in bf16).
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Callable

import torch
import torch.nn as nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointImpl,
    CheckpointWrapper,
    checkpoint_wrapper,
)
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from .parallel import Dist

# DiG blocks end with a transpose (a view). FSDP2 warns that an in-place op on a wrapped module's
# view output would skip its pre-backward hook; the backbones only use block outputs out of place
# (``x = block(x, c, grid)``, then ``x + ...``), so the warning is noise here.
warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")


def blocks_of(model: nn.Module) -> nn.ModuleList:
    """The model's transformer blocks (``model.blocks``); ``ValueError`` if it has none."""
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or len(blocks) == 0:
        raise ValueError(f"{type(model).__name__} has no `blocks` ModuleList: activation checkpointing "
                         "and FSDP work block by block (DiG and DiT models have them)")
    return blocks


# ----------------------------------------------------------------------------- activation checkpointing
def checkpoint_blocks(model: nn.Module) -> nn.Module:
    """Wrap every block of ``model.blocks`` in a non-reentrant activation checkpoint (in place);
    returns ``model``. Calling it twice leaves the blocks wrapped once."""
    blocks = blocks_of(model)
    for i, block in enumerate(blocks):
        if not isinstance(block, CheckpointWrapper):
            blocks[i] = checkpoint_wrapper(block, checkpoint_impl=CheckpointImpl.NO_REENTRANT)
    return model


def is_checkpointed(model: nn.Module) -> bool:
    return any(isinstance(m, CheckpointWrapper) for m in model.modules())


# ----------------------------------------------------------------------------- FSDP2
def is_sharded(module: nn.Module) -> bool:
    """Whether ``fully_shard`` was applied to ``module`` (its parameters are DTensor shards)."""
    return isinstance(module, FSDPModule)


def mixed_precision(dtype: torch.dtype, root: bool = False) -> MixedPrecisionPolicy:
    """The FSDP2 policy for a training precision ``dtype`` (see the module docstring): blocks
    all-gather in ``dtype``, the root in float32; gradients are always reduced in float32."""
    gather = None if root or dtype == torch.float32 else dtype
    return MixedPrecisionPolicy(param_dtype=gather, reduce_dtype=torch.float32, cast_forward_inputs=False)


def make_mesh(dist: Dist) -> DeviceMesh:
    """A 1-D device mesh over all processes (the FSDP data-parallel dimension)."""
    return init_device_mesh(dist.device.type, (dist.world_size,))


def shard(model: nn.Module, mesh: DeviceMesh, dtype: torch.dtype = torch.float32) -> nn.Module:
    """``fully_shard`` each block (each is one all-gather / reduce-scatter unit), then the root
    (the remaining parameters); in place, returns ``model``. ``model`` must already be on the
    mesh's device type."""
    for block in blocks_of(model) if hasattr(model, "blocks") else []:
        fully_shard(block, mesh=mesh, mp_policy=mixed_precision(dtype))
    fully_shard(model, mesh=mesh, mp_policy=mixed_precision(dtype, root=True))
    return model


def prepare(model: nn.Module, ema_model: nn.Module, dist: Dist, parallel: str = "ddp",
            activation_checkpointing: bool = False,
            dtype: torch.dtype = torch.float32) -> tuple[nn.Module, nn.Module]:
    """The model and its EMA copy as the training loop uses them: ``(model, ema_model)``.

    ``activation_checkpointing`` wraps the model's blocks (not the EMA's: it never runs backward).
    ``parallel == "fsdp"`` with several processes shards both with the same mesh and layout, so
    every EMA shard sits next to the parameter shard it averages. One process, or ``"ddp"``: the
    models are returned unsharded (DDP wrapping is ``parallel.wrap_model``'s job). Build the
    optimizer from the returned model's parameters.
    """
    if parallel not in ("ddp", "fsdp"):
        raise ValueError(f"parallel must be 'ddp' or 'fsdp', got {parallel!r}")
    if activation_checkpointing:
        checkpoint_blocks(model)
    if parallel == "fsdp" and dist.distributed:
        mesh = make_mesh(dist)
        shard(model, mesh, dtype)
        shard(ema_model, mesh, dtype)
    return model, ema_model


class FullCopy:
    """A plain, unsharded copy of a sharded module on rank 0, for work only rank 0 does.

    ``with FullCopy(build, dist).of(module) as m:`` gathers ``module``'s full weights (a collective:
    every rank must enter) into a copy built once by ``build()`` (a function returning the plain
    architecture, kept on the CPU between uses); rank 0 gets the copy on its device in eval mode,
    the other ranks ``None``. An unsharded ``module`` is handed through as it is.
    """

    def __init__(self, build: Callable[[], nn.Module], dist: Dist):
        self.build, self.dist = build, dist
        self._copy: nn.Module | None = None

    @contextlib.contextmanager
    def of(self, module: nn.Module):
        if not is_sharded(module):
            yield module
            return
        full = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if not self.dist.is_main:
            yield None
            return
        if self._copy is None:
            # Building initialises weights from torch's RNG; keep the training noise stream untouched.
            with torch.random.fork_rng(devices=[]):
                self._copy = self.build().eval().requires_grad_(False)
        self._copy.load_state_dict(full)
        try:
            yield self._copy.to(self.dist.device)
        finally:
            self._copy.to("cpu")
