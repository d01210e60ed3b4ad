"""The Triton GLA kernels as PyTorch custom ops (``torch.ops.gladiff.gla_fwd`` / ``gla_bwd``).

Custom ops with fake (meta) implementations let ``torch.compile`` trace a whole DiG without graph
breaks: the compiler sees an opaque op with known output shapes, and autograd is registered on the
op itself. The kernels allocate nothing outside PyTorch's allocator and never synchronise with the
host, so the ops are CUDA-graph capturable. Importing this module imports Triton; the dispatcher
imports it only when the ``"triton"`` backend is used.

Three implementations stand behind the ops: ``"sequential"`` (``triton_chunk``), ``"parallel"``
(``triton_parallel``) and ``"quadratic"`` (``triton_quadratic``, short sequences), chosen by
``triton_chunk.CONFIG["impl"]`` (``GLADIFF_GLA_TRITON="impl=parallel"``; ``"auto"``: see
:func:`resolve_impl`) when ``gla_triton`` is called; the choice travels with the op as an argument, so
backward uses the forward's implementation and the fake impls give that implementation's saved-tensor
shapes. The sequential implementation's backward variant (``CONFIG["bwd"]``, fused or split) is read
when the backward runs; both use the same saved tensors, so the ops and their fake impls do not
depend on it.

**Gate logits.** With ``gate_logit_normalizer`` ``n > 0`` the ``g`` input holds gate logits and the
log forget gates are ``logsigmoid(g) / n``; ``dg`` is then the gradient on the logits. The quadratic
kernels form the gates as they load them (the float32 log-gate tensor never exists); for the other
implementations the op forms them with PyTorch around the kernels.
"""
from __future__ import annotations

import torch

import torch.nn.functional as F

from . import triton_chunk as _k
from . import triton_parallel as _p
from . import triton_quadratic as _quad

_DEVICES = ("cuda", "cpu")  # cpu: only under TRITON_INTERPRET=1 (tests)


def _impl(name: str):
    """The kernel module of implementation ``name`` (``triton_chunk.IMPLS``)."""
    if name not in _k.IMPLS:
        raise ValueError(f"GLA Triton implementation must be one of {_k.IMPLS}, got {name!r}")
    return {"parallel": _p, "quadratic": _quad}.get(name, _k)


def resolve_impl(name: str, T: int) -> str:
    """The implementation ``name`` means for sequences of ``T`` tokens: ``"auto"`` is ``"quadratic"``
    up to ``triton_quadratic.MAX_T`` tokens (no state, every block its own program) and
    ``"sequential"`` beyond (work linear in ``T``)."""
    if name == "auto":
        return "quadratic" if T <= _quad.MAX_T else "sequential"
    return name


def _log_gates(g, n: float):
    """Log forget gates from logits ``g``: ``logsigmoid(g) / n`` in float32."""
    return F.logsigmoid(g.float()) / n


@torch.library.custom_op("gladiff::gla_fwd", mutates_args=(), device_types=_DEVICES)
def gla_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, scale: float,
            scan_col: bool, reverse: bool, grid_h: int, grid_w: int, impl: str, gate_logit_normalizer: float
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(o, saved1, saved2)``; the last two are saved for backward (sequential: segment-start states
    and segment log-decays; parallel, quadratic: empty). ``gate_logit_normalizer``: 0, or ``n`` when
    ``g`` holds gate logits."""
    if impl == "quadratic":
        return _quad.gla_fwd(q, k, v, g, scale, scan_col, reverse, grid_h, grid_w, gate_logit_normalizer)
    if gate_logit_normalizer:
        g = _log_gates(g, gate_logit_normalizer)
    return _impl(impl).gla_fwd(q, k, v, g, scale, scan_col, reverse, grid_h, grid_w)


@gla_fwd.register_fake
def _gla_fwd_fake(q, k, v, g, scale, scan_col, reverse, grid_h, grid_w, impl, gate_logit_normalizer):
    B, T, H, dk = q.shape
    dv = v.shape[-1]
    s0_shape, gs_shape = _impl(impl).state_shapes(B, T, H, dk, dv)
    return (q.new_empty((B, T, H, dv), dtype=v.dtype), q.new_empty(s0_shape, dtype=torch.float32),
            q.new_empty(gs_shape, dtype=torch.float32))


@torch.library.custom_op("gladiff::gla_bwd", mutates_args=(), device_types=_DEVICES)
def gla_bwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, do: torch.Tensor,
            s0: torch.Tensor, gs: torch.Tensor, scale: float, scan_col: bool, reverse: bool, grid_h: int,
            grid_w: int, impl: str, gate_logit_normalizer: float
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(dq, dk, dv, dg)`` for output gradient ``do`` (``dg`` on the logits with a normalizer)."""
    if impl == "quadratic":
        return _quad.gla_bwd(q, k, v, g, do, s0, gs, scale, scan_col, reverse, grid_h, grid_w,
                             gate_logit_normalizer)
    if not gate_logit_normalizer:
        return _impl(impl).gla_bwd(q, k, v, g, do, s0, gs, scale, scan_col, reverse, grid_h, grid_w)
    dq, dk, dv, dlog = _impl(impl).gla_bwd(q, k, v, _log_gates(g, gate_logit_normalizer), do, s0, gs, scale,
                                           scan_col, reverse, grid_h, grid_w)
    # d logsigmoid(x) / dx = sigmoid(-x)
    dg = dlog.float() * torch.sigmoid(-g.float()) / gate_logit_normalizer
    return dq, dk, dv, dg.to(g.dtype)


@gla_bwd.register_fake
def _gla_bwd_fake(q, k, v, g, do, s0, gs, scale, scan_col, reverse, grid_h, grid_w, impl, gate_logit_normalizer):
    shape_k = tuple(q.shape)
    return (q.new_empty(shape_k), k.new_empty(shape_k), v.new_empty(tuple(v.shape)), g.new_empty(shape_k))


def _setup_context(ctx, inputs, output):
    q, k, v, g, scale, scan_col, reverse, grid_h, grid_w, impl, gate_logit_normalizer = inputs
    _, s0, gs = output
    ctx.mark_non_differentiable(s0, gs)
    ctx.save_for_backward(q, k, v, g, s0, gs)
    ctx.args = (scale, scan_col, reverse, grid_h, grid_w, impl, gate_logit_normalizer)


def _backward(ctx, do, _ds0, _dgs):
    q, k, v, g, s0, gs = ctx.saved_tensors
    dq, dk, dv, dg = gla_bwd(q, k, v, g, do, s0, gs, *ctx.args)
    return dq, dk, dv, dg, None, None, None, None, None, None, None


gla_fwd.register_autograd(_backward, setup_context=_setup_context)


def _last_dim_contiguous(x):
    return x if x.stride(-1) == 1 else x.contiguous()


def gla_triton(q, k, v, g, scale: float, scan: str = "row", reverse: bool = False, grid=None,
               gate_logit_normalizer: float | None = None):
    """``q, k, g: [B, T, H, dk]``, ``v: [B, T, H, dv]`` -> ``o: [B, T, H, dv]`` (v's dtype), raster
    order; the kernels scan in ``scan``/``reverse`` order of ``grid`` by index arithmetic, with the
    implementation ``triton_chunk.CONFIG["impl"]`` names at the time of the call. ``g``: log forget
    gates, or gate logits when ``gate_logit_normalizer`` is given."""
    T = q.shape[1]
    grid_h, grid_w = grid if grid is not None else (1, T)
    q, k, v, g = (_last_dim_contiguous(x) for x in (q, k, v, g))
    o, _, _ = gla_fwd(q, k, v, g, float(scale), scan == "col", bool(reverse), int(grid_h), int(grid_w),
                      resolve_impl(_k.CONFIG["impl"], T), float(gate_logit_normalizer or 0.0))
    return o
