"""The exact step-by-step GLA recurrence: the reference every other backend is tested against.

S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t,    o_t = (scale * q_t) S_t

visited in the scan order; outputs are written straight to their raster positions.
"""
from __future__ import annotations

import torch

from .order import scan_order


def gla_recurrent(q, k, v, g, scale: float, scan: str = "row", reverse: bool = False, grid=None):
    """``q, k, g: [B, T, H, dk]``, ``v: [B, T, H, dv]`` -> ``o: [B, T, H, dv]`` (input dtype).

    Accumulates in float32 (float64 for float64 inputs). Differentiable through autograd.
    """
    B, T, H, dk = q.shape
    dv = v.shape[-1]
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    perm = scan_order(T, scan, reverse, grid).tolist()
    state = q.new_zeros(B, H, dk, dv, dtype=acc)
    outs = [None] * T
    for t in perm:
        q_t, k_t, v_t = q[:, t].to(acc), k[:, t].to(acc), v[:, t].to(acc)
        decay = g[:, t].to(acc).exp()
        state = decay.unsqueeze(-1) * state + k_t.unsqueeze(-1) * v_t.unsqueeze(-2)
        outs[t] = torch.einsum("bhk,bhkv->bhv", q_t * scale, state)
    return torch.stack(outs, dim=1).to(q.dtype)
