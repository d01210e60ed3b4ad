"""Inputs and the float64 reference shared by the Triton GLA kernel tests (both implementations)."""
import torch
import torch.nn.functional as F

from gladiff.ops import gla

ORDERS = [("row", False), ("row", True), ("col", False), ("col", True)]


def make_inputs(B, T, H, dk, dv, gate_scale=1.0):
    """Random float32 ``q, k, g: [B, T, H, dk]``, ``v, do: [B, T, H, dv]``; log-gates
    ``logsigmoid(2 N(0, 1)) * gate_scale`` (<= 0)."""
    q = torch.randn(B, T, H, dk)
    k = torch.randn(B, T, H, dk)
    v = torch.randn(B, T, H, dv)
    g = F.logsigmoid(torch.randn(B, T, H, dk) * 2) * gate_scale
    do = torch.randn(B, T, H, dv)
    return q, k, v, g, do


def reference(q, k, v, g, do, scale, scan, reverse, grid):
    """``[o, dq, dk, dv, dg]`` of the exact recurrence in float64 for output gradient ``do``."""
    xs = [x.double().requires_grad_(True) for x in (q, k, v, g)]
    o = gla(*xs, scale=scale, scan=scan, reverse=reverse, grid=grid, backend="recurrent")
    return [o.detach()] + list(torch.autograd.grad(o, xs, do.double()))


def rel(a, b):
    """``||a - b|| / ||b||`` (``b`` float64)."""
    return (torch.linalg.vector_norm(a.double() - b) / torch.linalg.vector_norm(b)).item()


def assert_close_all(out, ref, tol):
    """Each of ``[o, dq, dk, dv, dg]`` finite and within relative error ``tol`` of the reference."""
    for name, a, r in zip(["o", "dq", "dk", "dv", "dg"], out, ref):
        assert torch.isfinite(a).all(), f"{name} has non-finite values"
        err = rel(a, r)
        assert err < tol, f"{name}: relative error {err:.2e} >= {tol}"
