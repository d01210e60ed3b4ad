"""flash-linear-attention's ``chunk_gla`` Triton kernel as a GLA backend (optional, CUDA only).

fla scans only in memory order, so this backend gathers the tokens into scan order and scatters the
output back; our own kernels (``backend="triton"``) scan by index arithmetic instead.
"""
from __future__ import annotations

import importlib.util

import torch

from .order import is_identity, scan_order


# Looked up once, so that dispatching stays traceable by torch.compile.
_HAS_FLA = importlib.util.find_spec("fla") is not None


def available() -> bool:
    return _HAS_FLA and torch.cuda.is_available()


def gla_fla(q, k, v, g, scale: float, scan: str = "row", reverse: bool = False, grid=None):
    from fla.ops.gla import chunk_gla

    T = q.shape[1]
    if not is_identity(scan, reverse):
        perm = scan_order(T, scan, reverse, grid, device=q.device)
        q, k, v, g = (x.index_select(1, perm) for x in (q, k, v, g))
    o, _ = chunk_gla(q, k, v, g, scale=scale)
    if not is_identity(scan, reverse):
        o = torch.empty_like(o).index_copy_(1, perm, o)
    return o
