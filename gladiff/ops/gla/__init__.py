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
import torch.nn.functional as F

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
    (``"sequential"``, ``"parallel"``, ``"quadratic"`` or ``"auto"``; ``None`` leaves the configured one,
    ``GLADIFF_GLA_TRITON``'s ``impl=``). For benchmarks comparing them in one process; imports Triton
    when ``name`` is given."""
    if name is None:
        yield
        return
    from .triton_chunk import CONFIG, IMPLS
    if name not in IMPLS + ("auto",):
        raise ValueError(f"GLA Triton implementation must be 'auto' or one of {IMPLS}, got {name!r}")
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
        backend: str = "auto", gate_logit_normalizer: float | None = None):
    """Gated linear attention along a scan order of the token grid.

    Args:
        q, k: ``[B, T, H, dk]`` queries and keys.
        v: ``[B, T, H, dv]`` values.
        g: ``[B, T, H, dk]`` log forget gates (<= 0; e.g. ``logsigmoid(.) / 16``), or gate logits
            when ``gate_logit_normalizer`` is given.
        gate_logit_normalizer: ``n``: ``g`` holds gate logits and the log forget gates are
            ``logsigmoid(g) / n`` (GLA's gate; the Triton kernels form them as they load ``g``, so
            the float32 log-gate tensor is never written; gradients flow to the logits).
        scale: query scale, default ``dk ** -0.5``.
        scan: ``"row"`` (raster order) or ``"col"`` (column-major order of ``grid``).
        reverse: scan the order backwards.
        grid: ``(h, w)`` with ``h * w == T``; needed for ``scan="col"``.
        backend: one of ``BACKENDS``.

    Returns:
        ``o: [B, T, H, dv]`` in the same raster token order and dtype as ``v``.
    """
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
    if gate_logit_normalizer is not None and not gate_logit_normalizer > 0:
        raise ValueError(f"gate_logit_normalizer must be a positive number, got {gate_logit_normalizer!r}")
    backend = resolve_backend(backend, q.device, q.dtype)
    if backend == "triton":
        return _gla_triton(q, k, v, g, scale, scan=scan, reverse=bool(reverse), grid=grid,
                           gate_logit_normalizer=gate_logit_normalizer)
    if gate_logit_normalizer is not None:  # in float32 at least (float64 stays float64)
        g = F.logsigmoid(g.to(torch.promote_types(g.dtype, torch.float32))) / gate_logit_normalizer
    fn = {"recurrent": gla_recurrent, "chunk": gla_chunk, "fla": _fla.gla_fla}[backend]
    return fn(q, k, v, g, scale, scan=scan, reverse=bool(reverse), grid=grid)
