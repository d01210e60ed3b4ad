"""Our Triton kernels compiled for the GPU against exact references computed in float64 on the same
inputs: the GLA kernels (both implementations, every backward of the sequential one, and
flash-linear-attention's ``chunk_gla`` when installed) against the recurrence, the depth-wise conv
against ``F.conv2d``; float32 and bf16, all four scan orders, odd grids, padded head sizes, several
segments, very negative gates; the output and every gradient. Outputs are poisoned with NaN first
(the allocator hands the poisoned memory back), so an element a kernel never writes fails.

The float64 reference runs once per input and scan order; q, k, v and the output gradient are drawn
bf16-representable so that the same reference serves the float32 and the bf16 runs. Tolerances
(``||out - ref|| / ||ref||``) hold an order of magnitude over what an H200 measured (float32 <= 7e-5,
bf16 <= 3.9e-3: benchmarks/results/gla_gpu_check_H200_final.json) and far under what a wrong term
costs (O(1))."""
from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from gladiff.ops import dwconv3x3, gla

pytestmark = pytest.mark.gpu

ORDERS = [("row", False), ("row", True), ("col", False), ("col", True)]
# name: (B, H, grid, dk, dv, gate scale)
CASES = {
    "odd T 37 on 1x37": (2, 3, (1, 37), 32, 64, 1.0),
    "odd grid 15x17, heads 20/40 padded": (2, 2, (15, 17), 20, 40, 1.0),
    "T 1024 in 4 segments": (1, 2, (32, 32), 32, 64, 1.0),
    "very negative gates (x30)": (1, 2, (8, 16), 32, 64, 30.0),
}
TOL = {torch.float32: 5e-4, torch.bfloat16: 1e-2}
FLA_TOL = {torch.float32: 5e-3, torch.bfloat16: 2e-2}  # fla's own precision choices (tf32 inside)
GRADS = ["o", "dq", "dk", "dv", "dg"]
# Implementations of backend="triton" (triton_chunk.CONFIG "impl" / "bwd"), and the cases each runs:
# the default (sequential, fused) everywhere; the others on a single- and a multi-segment case.
IMPLS = {
    ("sequential", "fused"): list(CASES),
    ("sequential", "split"): ["odd T 37 on 1x37", "T 1024 in 4 segments"],
    # (its chunk-state buffer is [B*H, chunks, BK, BV] with padded head sizes: the padded case too)
    ("sequential", "onepass"): ["odd T 37 on 1x37", "odd grid 15x17, heads 20/40 padded", "T 1024 in 4 segments"],
    ("parallel", "fused"): ["odd grid 15x17, heads 20/40 padded", "T 1024 in 4 segments"],
}


def poison(n_bytes: int = 512 * 2**20):
    """Fill free allocator memory with NaN so that unwritten outputs show up."""
    x = torch.full((n_bytes // 4,), float("nan"), device="cuda")
    del x


def rel(a, b):
    return (torch.linalg.vector_norm(a.double() - b) / torch.linalg.vector_norm(b)).item()


def gla_inputs(name):
    """Seeded ``q, k, v, g, do`` on the GPU for case ``name`` (float32; q, k, v, do bf16-exact)."""
    B, H, grid, dk, dv, gate_scale = CASES[name]
    T = grid[0] * grid[1]
    gen = torch.Generator(device="cuda").manual_seed(sorted(CASES).index(name))
    bf = lambda *shape: torch.randn(*shape, device="cuda", generator=gen).bfloat16().float()  # noqa: E731
    q, k, v, do = bf(B, T, H, dk), bf(B, T, H, dk), bf(B, T, H, dv), bf(B, T, H, dv)
    # Stronger decay than DiG's logsigmoid(.) / 16, so that it shows; scaled, hundreds below zero.
    spread = 2.0 if gate_scale == 1 else 4.0
    g = F.logsigmoid(torch.randn(B, T, H, dk, device="cuda", generator=gen) * spread) * gate_scale
    return q, k, v, g, do


def gla_grads(q, k, v, g, do, scan, reverse, grid, backend):
    xs = [x.detach().clone().requires_grad_(True) for x in (q, k, v, g)]
    poison()
    o = gla(*xs, scan=scan, reverse=reverse, grid=grid, backend=backend)
    return [o.detach()] + list(torch.autograd.grad(o, xs, do))


@pytest.fixture(scope="module")
def gla_reference():
    """``(case, scan, reverse) -> (inputs, [o, dq, dk, dv, dg] of the float64 recurrence)``, cached."""
    cache = {}

    def get(name, scan, reverse):
        key = (name, scan, reverse)
        if key not in cache:
            inputs = gla_inputs(name)
            ref = gla_grads(*(x.double() for x in inputs), scan, reverse, CASES[name][2], "recurrent")
            cache[key] = inputs, ref
        return cache[key]

    return get


def check_gla(get_reference, name, dtype, backend, tol):
    grid = CASES[name][2]
    for scan, reverse in ORDERS:
        (q, k, v, g, do), ref = get_reference(name, scan, reverse)
        out = gla_grads(*(x.to(dtype) for x in (q, k, v)), g, do.to(dtype), scan, reverse, grid, backend)
        assert out[0].dtype == dtype and out[4].dtype == torch.float32
        for what, a, r in zip(GRADS, out, ref):
            assert torch.isfinite(a).all(), f"{name} {scan}{'-rev' * reverse}: {what} has NaN/inf"
            err = rel(a, r)
            assert err < tol, f"{name} {scan}{'-rev' * reverse} {dtype}: {what} relative error {err:.2e} >= {tol}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("impl,bwd,name", [(i, b, n) for (i, b), names in IMPLS.items() for n in names])
def test_triton_gla_matches_the_recurrence(impl, bwd, name, dtype, gla_reference, monkeypatch):
    from gladiff.ops.gla import resolve_backend, triton_chunk

    assert resolve_backend("auto", "cuda", dtype) == "triton"  # what DiG runs on a GPU
    monkeypatch.setitem(triton_chunk.CONFIG, "impl", impl)
    monkeypatch.setitem(triton_chunk.CONFIG, "bwd", bwd)
    check_gla(gla_reference, name, dtype, "triton", TOL[dtype])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("name", ["odd T 37 on 1x37", "T 1024 in 4 segments"])
def test_fla_gla_matches_the_recurrence(name, dtype, gla_reference):
    if importlib.util.find_spec("fla") is None:
        pytest.skip("flash-linear-attention is not installed (pip install 'gladiff[fla]')")
    check_gla(gla_reference, name, dtype, "fla", FLA_TOL[dtype])


def test_segment_plan_of_the_cases():
    """The cases reach what they are named for: one segment, and four."""
    from gladiff.ops.gla import triton_chunk

    assert triton_chunk.plan_segments(2 * 3, 37)[1] == 1
    assert triton_chunk.plan_segments(1 * 2, 1024)[1] == 4


# ----------------------------------------------------------------------------- depth-wise conv
def conv_reference(x, weight, bias, dy, grid):
    """F.conv2d on the image laid out NCHW by a real transpose copy, float64: ``[y, dx, dw, db]``."""
    B, T, D = x.shape
    leaves = [t.detach().double().requires_grad_(True) for t in (x, weight, bias)]
    img = leaves[0].transpose(1, 2).reshape(B, D, *grid)
    y = F.conv2d(img, leaves[1], leaves[2], padding=1, groups=D).flatten(2).transpose(1, 2)
    return [y.detach(), *torch.autograd.grad(y, leaves, dy.double())]


def conv_grads(x, weight, bias, dy, grid):
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, weight, bias)]
    poison()
    # The kernel as every fourth SREM block sees it: transposed, then rotated by 180 degrees.
    y = dwconv3x3(leaves[0], leaves[1].transpose(-1, -2).flip(-1, -2), leaves[2], grid, backend="triton")
    return [y.detach(), *torch.autograd.grad(y, leaves, dy)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("B,grid,D", [(2, (15, 17), 70), (1, (1, 9), 5), (4, (16, 16), 384), (2, (7, 1), 33)])
def test_triton_dwconv_matches_conv2d(B, grid, D, dtype):
    gen = torch.Generator(device="cuda").manual_seed(D)
    T = grid[0] * grid[1]
    bf = lambda *shape: torch.randn(*shape, device="cuda", generator=gen).bfloat16().float()  # noqa: E731
    x, weight, bias, dy = bf(B, T, D), bf(D, 1, 3, 3), bf(D), bf(B, T, D)
    ref = conv_reference(x, weight.transpose(-1, -2).flip(-1, -2), bias, dy, grid)
    ref[2] = ref[2].transpose(-1, -2).flip(-1, -2)  # back to the stored kernel's frame (its own inverse)
    args = [t.to(dtype) for t in (x, weight, bias, dy)]
    out = conv_grads(*args, grid)
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    for what, a, r in zip(["y", "dx", "dweight", "dbias"], out, ref):
        assert a.dtype == dtype and a.shape == r.shape, what
        assert torch.isfinite(a).all() and rel(a, r) < tol, f"{what}: relative error {rel(a, r):.2e}"
    again = conv_grads(*args, grid)
    assert all(torch.equal(a, b) for a, b in zip(out, again))  # the backward is bitwise reproducible
