"""Gated Linear Attention (GLA) as one operator with several backends.

``gla(q, k, v, g)`` computes, per batch and head, along the scan order of the token grid::

    S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t,    o_t = (scale * q_t) S_t

Backends: ``"recurrent"`` (the exact recurrence, the reference), ``"chunk"`` (pure-PyTorch chunked
parallel form), ``"triton"`` (our Triton kernels, scanning every SREM order by index arithmetic; a
PyTorch custom op, CUDA), ``"fla"`` (flash-linear-attention's ``chunk_gla``; optional, CUDA) and
``"auto"`` (the fastest one available for the inputs' device and dtype).

Triton is imported only when the ``"triton"`` backend runs, so importing gladiff needs neither
Triton nor a GPU.
"""
from __future__ import annotations

import contextlib

import torch

from .._triton import TRITON_DTYPES as _TRITON_DTYPES
from .._triton import check_triton_backend
from .._triton import triton_available as _triton_available
from . import fla as _fla
from .chunk import gla_chunk
from .naive import gla_recurrent
from .order import SCANS, check_scan, scan_order

BACKENDS = ("auto", "recurrent", "chunk", "triton", "fla")
_triton_impl = None


def _gla_triton(*args, **kwargs):
    global _triton_impl
    if _triton_impl is None:
        from .triton_op import gla_triton
        _triton_impl = gla_triton
    return _triton_impl(*args, **kwargs)


__all__ = ["gla", "BACKENDS", "SCANS", "scan_order", "available_backends", "resolve_backend", "triton_impl"]


@contextlib.contextmanager
def triton_impl(name: str | None):
    """Inside the ``with`` block, backend ``"triton"`` runs implementation ``name`` of its kernels
    (``"sequential"`` or ``"parallel"``; ``None`` leaves the configured one, ``GLADIFF_GLA_TRITON``'s
    ``impl=``). For benchmarks comparing both in one process; imports Triton when ``name`` is given."""
    if name is None:
        yield
        return
    from .triton_chunk import CONFIG, IMPLS
    if name not in IMPLS:
        raise ValueError(f"GLA Triton implementation must be one of {IMPLS}, got {name!r}")
    before, CONFIG["impl"] = CONFIG["impl"], name
    try:
        yield
    finally:
        CONFIG["impl"] = before


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends that can run on ``device``, fastest first."""
    device = torch.device(device)
    names = []
    if device.type == "cuda" and _triton_available(device):
        names.append("triton")
    if device.type == "cuda" and _fla.available():
        names.append("fla")
    names += ["chunk", "recurrent"]
    return names


def resolve_backend(backend: str, device: torch.device | str, dtype: torch.dtype | None = None) -> str:
    """The concrete backend ``backend`` means on ``device`` for inputs of ``dtype``
    (``"auto"`` -> the fastest available)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown GLA backend {backend!r}; choose from {BACKENDS}")
    device = torch.device(device)
    if backend == "auto":
        names = available_backends(device)
        if dtype is not None and dtype not in _TRITON_DTYPES and "triton" in names:
            names.remove("triton")
        return names[0]
    if backend == "triton":
        check_triton_backend("GLA", device, dtype, "backend='chunk' or 'recurrent'")
    if backend == "fla" and not _fla.available():
        raise ValueError("backend='fla' needs a CUDA device and flash-linear-attention "
                         "(pip install 'gladiff[fla]')")
    return backend


def gla(q, k, v, g, *, scale=None, scan: str = "row", reverse: bool = False, grid=None,
        backend: str = "auto", check_gates: bool = True):
    """Gated linear attention along a scan order of the token grid.

    Args:
        q, k: ``[B, T, H, dk]`` queries and keys (floating point).
        v: ``[B, T, H, dv]`` values (floating point, the dtype of ``q`` and ``k``).
        g: ``[B, T, H, dk]`` log forget gates, floating point, each ``<= 0`` (e.g. ``logsigmoid(.) / 16``).
            ``-inf`` means "forget everything" (the state is multiplied by exactly 0): ``recurrent``
            and ``chunk`` compute it; the ``triton`` and ``fla`` kernels would return NaN and refuse
            it. A positive or NaN gate is refused (it would grow the state without bound).
        scale: query scale, default ``dk ** -0.5``.
        scan: ``"row"`` (raster order) or ``"col"`` (column-major order of ``grid``).
        reverse: scan the order backwards.
        grid: ``(h, w)`` with ``h * w == T``; needed for ``scan="col"``.
        backend: one of ``BACKENDS``.
        check_gates: check the values of ``g`` (``ValueError`` for a positive or NaN gate). It reads
            every gate, a device sync on a GPU, so it is skipped while ``torch.compile`` traces and
            while a CUDA graph is captured; callers whose gates are ``<= 0`` by construction (DiG's
            ``logsigmoid`` gates) pass ``False`` to keep their hot path free of syncs.

    Returns:
        ``o: [B, T, H, dv]`` in the same raster token order and dtype as ``v``.
    """
    for name, x in (("q", q), ("k", k), ("v", v), ("g", g)):
        if not x.dtype.is_floating_point:  # integer tensors would be truncated inside the kernels
            raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if q.ndim != 4:
        raise ValueError(f"q must be [B, T, H, dk], got shape {tuple(q.shape)}")
    if k.shape != q.shape or g.shape != q.shape:
        raise ValueError(f"q, k and g must share a shape; got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, g {tuple(g.shape)}")
    if v.ndim != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, T, H, dv] with B, T, H of q {tuple(q.shape[:3])}; "
                         f"got {tuple(v.shape)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    grid = check_scan(q.shape[1], scan, grid)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    backend = resolve_backend(backend, q.device, q.dtype)
    if check_gates and not _tracing(g):
        _check_gate_values(g, backend)
    fn = {"recurrent": gla_recurrent, "chunk": gla_chunk, "fla": _fla.gla_fla, "triton": _gla_triton}[backend]
    return fn(q, k, v, g, scale, scan=scan, reverse=bool(reverse), grid=grid)


def _tracing(x: torch.Tensor) -> bool:
    """Inside ``torch.compile`` tracing or a CUDA graph capture, where reading values is not possible."""
    if torch.compiler.is_compiling():
        return True
    return x.is_cuda and torch.cuda.is_current_stream_capturing()


# Backends whose kernels take differences of cumulative log-gates without special-casing -inf: a
# -inf gate would give NaN there ("fla" is assumed to, until measured), so it is refused rather than
# returned as NaN. Our Triton kernels floor gates at -1e4, which decays by exactly 0 in float32.
_NO_NEG_INF = ("fla",)


def _check_gate_values(g: torch.Tensor, backend: str) -> None:
    """``ValueError`` if a log forget gate is positive or NaN, or ``-inf`` for a backend in
    ``_NO_NEG_INF`` (one reduction over ``g`` when all is well)."""
    neg_inf_ok = backend not in _NO_NEG_INF
    ok = (g <= 0) if neg_inf_ok else ((g <= 0) & (g > float("-inf")))
    if not g.numel() or bool(ok.all()):
        return
    bad = g[~(g <= 0)]
    if bad.numel():
        raise ValueError(f"g holds log forget gates, which must be <= 0 (a gate exp(g) <= 1); got "
                         f"{bad.numel()} value(s) that are not, e.g. {bad[0].item()!r} (use e.g. "
                         "logsigmoid(x) / 16; -inf is allowed and forgets everything)")
    raise ValueError(f"g holds -inf gates, which backend {backend!r} does not support (its kernels would "
                     "return NaN); use backend='chunk' or 'recurrent', which treat -inf as forgetting everything")
