"""The Triton GLA kernels as PyTorch custom ops (``torch.ops.gladiff.gla_fwd`` / ``gla_bwd``).

Custom ops with fake (meta) implementations let ``torch.compile`` trace a whole DiG without graph
breaks: the compiler sees an opaque op with known output shapes, and autograd is registered on the
op itself. The kernels allocate nothing outside PyTorch's allocator and never synchronise with the
host, so the ops are CUDA-graph capturable. Importing this module imports Triton; the dispatcher
imports it only when the ``"triton"`` backend is used.

Two implementations stand behind the ops: ``"sequential"`` (``triton_chunk``) and ``"parallel"``
(``triton_parallel``), chosen by ``triton_chunk.CONFIG["impl"]`` (``GLADIFF_GLA_TRITON="impl=parallel"``)
when ``gla_triton`` is called; the choice travels with the op as an argument, so backward uses the
forward's implementation and the fake impls give that implementation's saved-tensor shapes. The
sequential implementation's backward variant (``CONFIG["bwd"]``: fused, split or onepass) is read
when the backward runs; all use the same saved tensors (onepass's chunk states are transient, inside
the op), so the ops and their fake impls do not depend on it.
"""
from __future__ import annotations

import torch

from . import triton_chunk as _k
from . import triton_parallel as _p

_DEVICES = ("cuda", "cpu")  # cpu: only under TRITON_INTERPRET=1 (tests)


def _impl(name: str):
    """The kernel module of implementation ``name`` (``triton_chunk.IMPLS``)."""
    if name not in _k.IMPLS:
        raise ValueError(f"GLA Triton implementation must be one of {_k.IMPLS}, got {name!r}")
    return _p if name == "parallel" else _k


@torch.library.custom_op("gladiff::gla_fwd", mutates_args=(), device_types=_DEVICES)
def gla_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, scale: float,
            scan_col: bool, reverse: bool, grid_h: int, grid_w: int, impl: str
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(o, saved1, saved2)``; the last two are saved for backward (sequential: segment-start states
    and segment log-decays; parallel: empty)."""
    return _impl(impl).gla_fwd(q, k, v, g, scale, scan_col, reverse, grid_h, grid_w)


@gla_fwd.register_fake
def _gla_fwd_fake(q, k, v, g, scale, scan_col, reverse, grid_h, grid_w, impl):
    B, T, H, dk = q.shape
    dv = v.shape[-1]
    s0_shape, gs_shape = _impl(impl).state_shapes(B, T, H, dk, dv)
    return (q.new_empty((B, T, H, dv), dtype=v.dtype), q.new_empty(s0_shape, dtype=torch.float32),
            q.new_empty(gs_shape, dtype=torch.float32))


@torch.library.custom_op("gladiff::gla_bwd", mutates_args=(), device_types=_DEVICES)
def gla_bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, do: torch.Tensor,
            s0: torch.Tensor, gs: torch.Tensor, scale: float, scan_col: bool, reverse: bool, grid_h: int,
            grid_w: int, impl: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv, dg)`` for output gradient ``do``."""
    return _impl(impl).gla_bwd(q, k, v, g, do, s0, gs, scale, scan_col, reverse, grid_h, grid_w)


@gla_bwd.register_fake
def _gla_bwd_fake(q, k, v, g, do, s0, gs, scale, scan_col, reverse, grid_h, grid_w, impl):
    shape_k = tuple(q.shape)
    return (q.new_empty(shape_k), k.new_empty(shape_k), v.new_empty(tuple(v.shape)), g.new_empty(shape_k))


def _setup_context(ctx, inputs, output):
    q, k, v, g, scale, scan_col, reverse, grid_h, grid_w, impl = inputs
    _, s0, gs = output
    ctx.mark_non_differentiable(s0, gs)
    ctx.save_for_backward(q, k, v, g, s0, gs)
    ctx.args = (scale, scan_col, reverse, grid_h, grid_w, impl)


def _backward(ctx, do, _ds0, _dgs):
    q, k, v, g, s0, gs = ctx.saved_tensors
    dq, dk, dv, dg = gla_bwd(q, k, v, g, do, s0, gs, *ctx.args)
    return dq, dk, dv, dg, None, None, None, None, None, None


gla_fwd.register_autograd(_backward, setup_context=_setup_context)


def _last_dim_contiguous(x):
    return x if x.stride(-1) == 1 else x.contiguous()


def gla_triton(q, k, v, g, scale: float, scan: str = "row", reverse: bool = False, grid=None):
    """``q, k, g: [B, T, H, dk]``, ``v: [B, T, H, dv]`` -> ``o: [B, T, H, dv]`` (v's dtype), raster
    order; the kernels scan in ``scan``/``reverse`` order of ``grid`` by index arithmetic, with the
    implementation ``triton_chunk.CONFIG["impl"]`` names at the time of the call."""
    T = q.shape[1]
    grid_h, grid_w = grid if grid is not None else (1, T)
    q, k, v, g = (_last_dim_contiguous(x) for x in (q, k, v, g))
    o, _, _ = gla_fwd(q, k, v, g, float(scale), scan == "col", bool(reverse), int(grid_h), int(grid_w),
                      _k.CONFIG["impl"])
    return o
