"""SREM's depth-wise 3x3 convolution on tokens: ``[B, T, D]`` in raster order of an ``(h, w)`` grid.

``dwconv3x3(x, weight, bias, grid)`` computes exactly ``F.conv2d`` (zero padding 1, ``groups=D``)
on the image the tokens are, and returns tokens again. Backends: ``"torch"`` (``F.conv2d`` on a
zero-copy channels-last view of the tokens: the reference and the CPU default), ``"triton"`` (our
kernels in ``dwconv_triton.py``, PyTorch custom ops; CUDA, or the CPU under ``TRITON_INTERPRET=1``)
and ``"auto"`` (torch: measured faster on an H200 in CUDA-graph replays at DiG's shapes, e.g.
0.123 vs 0.155 ms fwd+bwd at XL/2 256 px; ``benchmarks/results/dwconv_gpu_check_H200.json``).

Triton is imported only when the ``"triton"`` backend runs, so importing gladiff needs neither
Triton nor a GPU.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._triton import check_triton_backend

BACKENDS = ("auto", "torch", "triton")
_triton_impl = None

__all__ = ["dwconv3x3", "BACKENDS", "resolve_backend"]


def _dwconv_torch(x, weight, bias, grid):
    B, T, D = x.shape
    # Tokens [B, T, D] are the image in channels-last layout: view them as NCHW with channels-last
    # strides (no copy) so the conv runs on cuDNN's NHWC depthwise kernels and its output reads back
    # as [B, T, D] without a transpose copy either way.
    img = x.reshape(B, *grid, D).permute(0, 3, 1, 2)
    img = F.conv2d(img, weight, bias, padding=1, groups=D)
    return img.permute(0, 2, 3, 1).reshape(B, T, D)


def _dwconv_triton(x, weight, bias, grid):
    global _triton_impl
    if _triton_impl is None:
        from .dwconv_triton import dwconv3x3_triton
        _triton_impl = dwconv3x3_triton
    return _triton_impl(x, weight, bias, grid)


def resolve_backend(backend: str, device: torch.device | str, dtype: torch.dtype | None = None) -> str:
    """The concrete backend ``backend`` means on ``device`` for inputs of ``dtype``
    (``"auto"`` -> torch, the faster one measured; see the module docstring)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown dwconv backend {backend!r}; choose from {BACKENDS}")
    device = torch.device(device)
    if backend == "auto":
        return "torch"
    if backend == "triton":
        check_triton_backend("dwconv", device, dtype, "backend='torch'")
    return backend


def dwconv3x3(x, weight, bias=None, grid=None, backend: str = "auto"):
    """Depth-wise 3x3 convolution (zero padding 1, stride 1) over the token grid.

    Args:
        x: ``[B, T, D]`` tokens in raster order of ``grid`` (any strides; the Triton backend copies
            only when the channel dim is not contiguous).
        weight: ``[D, 1, 3, 3]``, as ``nn.Conv2d(D, D, 3, groups=D).weight`` (cross-correlation:
            ``weight[c, 0, 1 + di, 1 + dj]`` multiplies the token ``di`` rows down, ``dj`` columns right).
        bias: ``[D]`` or ``None``.
        grid: ``(h, w)`` with ``h * w == T``.
        backend: one of ``BACKENDS``.

    Returns:
        ``y: [B, T, D]``, contiguous, in the dtype ``F.conv2d`` gives (``x``'s, or autocast's).
        Gradients flow to ``x``, ``weight`` and ``bias``.
    """
    if x.ndim != 3:
        raise ValueError(f"x must be [B, T, D] tokens, got shape {tuple(x.shape)}")
    B, T, D = x.shape
    if grid is None or len(grid) != 2:
        raise ValueError(f"grid must be (h, w), got {grid!r}")
    h, w = int(grid[0]), int(grid[1])
    if h < 1 or w < 1 or h * w != T:
        raise ValueError(f"grid {tuple(grid)} does not hold the {T} tokens of x (need h * w == T)")
    if tuple(weight.shape) != (D, 1, 3, 3):
        raise ValueError(f"weight must be [D, 1, 3, 3] = [{D}, 1, 3, 3] for x with D={D}, "
                         f"got {tuple(weight.shape)}")
    if bias is not None and tuple(bias.shape) != (D,):
        raise ValueError(f"bias must be [D] = [{D}] or None, got {tuple(bias.shape)}")
    backend = resolve_backend(backend, x.device, x.dtype)
    if backend == "torch":
        return _dwconv_torch(x, weight, bias, (h, w))
    if torch.is_autocast_enabled(x.device.type):
        # Autocast runs F.conv2d in its lower precision; the custom op gets no autocast treatment,
        # so cast here to compute what the torch backend computes.
        dtype = torch.get_autocast_dtype(x.device.type)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    elif not (x.dtype == weight.dtype and (bias is None or bias.dtype == x.dtype)):
        raise ValueError(f"x, weight and bias must share a dtype (as F.conv2d requires); got x {x.dtype}, "
                         f"weight {weight.dtype}, bias {None if bias is None else bias.dtype}")
    return _dwconv_triton(x, weight, bias, (h, w))
