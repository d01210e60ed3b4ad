"""The SREM depth-wise 3x3 conv on DiG's token tensors: NCHW through a transpose copy (the first
implementation) against a zero-copy channels-last view; forward + backward, bf16, CUDA graphs.

    python benchmarks/dwconv_layouts.py
"""
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, __file__.rsplit("/", 2)[0])
from gladiff.bench.common import capture_graph, gpu_time_ms  # noqa: E402


def nchw(x, w, b, grid):
    B, T, D = x.shape
    img = F.conv2d(x.transpose(1, 2).reshape(B, D, *grid), w, b, padding=1, groups=D)
    return img.flatten(2).transpose(1, 2)


def channels_last(x, w, b, grid):
    B, T, D = x.shape
    img = F.conv2d(x.reshape(B, *grid, D).permute(0, 3, 1, 2), w, b, padding=1, groups=D)
    return img.permute(0, 2, 3, 1).reshape(B, T, D)


for B, side, D in [(32, 16, 1152), (1, 128, 384), (4, 128, 384), (2, 64, 1152)]:
    x = torch.randn(B, side * side, D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    w = torch.randn(D, 1, 3, 3, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    b = torch.randn(D, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    dy = torch.randn_like(x)
    ref = [r.float() for r in [nchw(x, w, b, (side, side))] + list(torch.autograd.grad(nchw(x, w, b, (side, side)), (x, w, b), dy))]
    for name, fn in [("nchw+copy", nchw), ("channels_last", channels_last)]:
        out = [fn(x, w, b, (side, side))]
        out += list(torch.autograd.grad(out[0], (x, w, b), dy))
        err = max(((o.float() - r).norm() / r.norm()).item() for o, r in zip(out, ref))
        step = lambda: torch.autograd.grad(fn(x, w, b, (side, side)), (x, w, b), dy)
        g = capture_graph(step)
        ms = gpu_time_ms(g.replay, reps=20)
        print(f"B {B:2d} grid {side}x{side} D {D}: {name:14} fwd+bwd {ms:7.3f} ms  (max rel diff vs nchw {err:.1e})")
