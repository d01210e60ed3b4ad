"""SREM's depth-wise 3x3 conv on the GPU: our Triton kernels against F.conv2d, then timed.

1. Correctness at DiG's shapes: output and the three gradients of ``dwconv3x3(backend="triton")``
   and of the channels-last ``F.conv2d`` path (``backend="torch"``), float32 and bf16, against
   ``F.conv2d`` in float64 on a physically permuted NCHW image, as ``||out - ref|| / ||ref||``, with
   an oriented (transposed and flipped) kernel; outputs poisoned with NaN first (unwritten elements
   fail); the Triton backward is run twice and must agree bit for bit.
2. Timing (bf16, the training dtype; median of CUDA-event-timed runs): forward and forward+backward
   of triton vs torch channels-last vs torch NCHW (transpose copies around the conv), replayed from
   a CUDA graph and eager; effective bandwidth against the measured copy rate.
3. A small sweep of the Triton tile (tokens x channels x warps), CUDA-graph timed, to check the
   default (``--no-sweep`` skips it).

    python benchmarks/check_dwconv_gpu.py --out DIR     # writes DIR/dwconv_gpu_check.json

Without a GPU it says so and exits 0. Expected to take 1-2 minutes on an H200 (mostly Triton
compiles of the swept tiles; --no-sweep skips them); not yet run on a GPU.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gladiff.bench.common import (capture_graph, copy_bandwidth_gbs, environment, gpu_time_ms,  # noqa: E402
                                  no_gpu_message, write_json)
from gladiff.ops import dwconv3x3  # noqa: E402

# (name, B, T, D); every grid square.
SHAPES = [
    ("XL/2 256px", 32, 256, 1152),
    ("S/2 256px", 32, 256, 384),
    ("S/2 2048px B1", 1, 16384, 384),
    ("S/2 2048px B4", 4, 16384, 384),
    ("XL/2 512px", 32, 1024, 1152),
]
TOL = {"float32": 1e-5, "bfloat16": 1e-2}
# Triton tiles swept, forward and backward separately: (tokens, channels, warps[, dx fused into the
# backward kernel]); the first of each is the default (dwconv_triton.CONFIG).
SWEEP_FWD = [(16, 64, 4), (8, 128, 4), (32, 64, 8), (16, 128, 8), (8, 64, 2)]
SWEEP_BWD = [(8, 64, 8, True), (4, 64, 4, True), (16, 64, 8, True), (8, 128, 8, True),
             (8, 64, 8, False), (16, 64, 8, False)]
NAMES = ["y", "dx", "dweight", "dbias"]
# --cpu-smoke: the script's code paths on the CPU (Triton interpreter), tiny shapes, wall-clock
# timings without graphs; numbers meaningless, for checking the script without a GPU.
DEVICE = "cuda"
SMOKE_SHAPES = [("smoke 2x16x70", 2, 16, 70), ("smoke 1x9x33", 1, 9, 33)]


def nchw(x, weight, bias, grid):
    """The first implementation: transpose copies to NCHW and back around the conv."""
    B, T, D = x.shape
    img = F.conv2d(x.transpose(1, 2).reshape(B, D, *grid), weight, bias, padding=1, groups=D)
    return img.flatten(2).transpose(1, 2)


def channels_last(x, weight, bias, grid):
    return dwconv3x3(x, weight, bias, grid, backend="torch")


def triton(x, weight, bias, grid):
    return dwconv3x3(x, weight, bias, grid, backend="triton")


IMPLS = {"triton": triton, "torch_channels_last": channels_last, "torch_nchw": nchw}


def poison(n_bytes: int = 1024 * 2**20):
    """Fill free allocator memory with NaN so that unwritten outputs show up."""
    if DEVICE != "cuda":
        return
    x = torch.full((n_bytes // 4,), float("nan"), device=DEVICE)
    del x


def grads(fn, x, weight, bias, dy, grid):
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, weight, bias)]
    poison()
    # The kernel as block 3 of every SREM period sees it: transposed, then rotated by 180 degrees.
    y = fn(leaves[0], leaves[1].transpose(-1, -2).flip(-1, -2), leaves[2], grid)
    return [y.detach(), *torch.autograd.grad(y, leaves, dy)]


def rel(a, b):
    a, b = a.double(), b.double()
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)).item()


def check(shapes):
    rows = []
    for name, B, T, D in shapes:
        side = math.isqrt(T)
        grid = (side, side)
        # bf16-representable draws: one float64 reference serves both dtypes.
        bf = lambda *s: torch.randn(*s, device=DEVICE).bfloat16().double()  # noqa: E731
        x, weight, bias, dy = bf(B, T, D), bf(D, 1, 3, 3), bf(D), bf(B, T, D)
        ref = grads(nchw, x, weight, bias, dy, grid)
        for dtype in (torch.float32, torch.bfloat16):
            dname = str(dtype).replace("torch.", "")
            args = [t.to(dtype) for t in (x, weight, bias, dy)]
            for impl in ("triton", "torch_channels_last"):
                try:
                    out = grads(IMPLS[impl], *args[:3], args[3], grid)
                    errs = {n: rel(a, r) for n, a, r in zip(NAMES, out, ref)}
                    dtypes_ok = all(a.dtype == dtype for a in out)
                    repro = None
                    if impl == "triton":
                        again = grads(IMPLS[impl], *args[:3], args[3], grid)
                        repro = all(torch.equal(a, b) for a, b in zip(out, again))
                except Exception as err:  # recorded, and counted as a failure
                    print(f"  {impl} {dname}: {type(err).__name__}: {err}")
                    errs, dtypes_ok, repro = {n: float("nan") for n in NAMES}, False, False
                worst = max(errs.values())
                ok = not math.isnan(worst) and worst <= TOL[dname] and dtypes_ok and repro is not False
                rows.append(dict(case=name, B=B, T=T, D=D, grid=grid, dtype=dname, impl=impl, rel_err=errs,
                                 tol=TOL[dname], dtypes_kept=dtypes_ok, bitwise_reproducible=repro, ok=ok))
                print(f"  check {name:14} {dname:8} {impl:20} " + " ".join(f"{n} {errs[n]:.1e}" for n in NAMES)
                      + f"  repro {repro}  {'ok' if ok else 'FAIL'}", flush=True)
        del x, dy, ref
    return rows


def step_fns(fn, x, weight, bias, dy, grid):
    """Forward alone, and forward + backward (what a training step runs), on fixed inputs."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, weight, bias)]
    fwd = lambda: fn(*(t.detach() for t in leaves), grid)  # noqa: E731
    both = lambda: torch.autograd.grad(fn(*leaves, grid), leaves, dy)  # noqa: E731
    return fwd, both


def graph_ms(fn, reps):
    """Median ms of ``fn`` replayed from a CUDA graph."""
    if DEVICE != "cuda":
        return wall_ms(fn)
    return gpu_time_ms(capture_graph(fn).replay, reps=reps)


def eager_ms(fn, reps):
    return gpu_time_ms(fn, reps=reps) if DEVICE == "cuda" else wall_ms(fn)


def wall_ms(fn):
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def timed(fn, reps):
    """``(CUDA-graph replay ms, eager ms)`` of ``fn``."""
    return graph_ms(fn, reps), eager_ms(fn, reps)


def bench(shapes, reps, copy_gbs):
    rows = []
    for name, B, T, D in shapes:
        side = math.isqrt(T)
        grid = (side, side)
        x, dy = (torch.randn(B, T, D, device=DEVICE, dtype=torch.bfloat16) for _ in range(2))
        weight = torch.randn(D, 1, 3, 3, device=DEVICE, dtype=torch.bfloat16)
        bias = torch.randn(D, device=DEVICE, dtype=torch.bfloat16)
        n_bytes = B * T * D * 2
        for impl, fn in IMPLS.items():
            fwd, both = step_fns(fn, x, weight, bias, dy, grid)
            fwd_graph, fwd_eager = timed(fwd, reps)
            both_graph, both_eager = timed(both, reps)
            # Memory floor: forward reads x and writes y; backward reads x and dy and writes dx.
            floor_ms = 5 * n_bytes / copy_gbs / 1e6
            rows.append(dict(case=name, B=B, T=T, D=D, dtype="bfloat16", impl=impl, fwd_graph_ms=fwd_graph,
                             fwd_eager_ms=fwd_eager, fwd_bwd_graph_ms=both_graph, fwd_bwd_eager_ms=both_eager,
                             fwd_bwd_floor_ms=floor_ms, fwd_bwd_bandwidth_fraction=floor_ms / both_graph))
            print(f"  time  {name:14} {impl:20} fwd {fwd_graph:7.3f} ms (eager {fwd_eager:7.3f})  fwd+bwd "
                  f"{both_graph:7.3f} ms (eager {both_eager:7.3f}; floor {floor_ms:6.3f})", flush=True)
    return rows


def sweep(shapes, reps):
    from gladiff.ops import dwconv_triton as K

    rows = []
    for name, B, T, D in shapes:
        side = math.isqrt(T)
        x, dy = (torch.randn(B, T, D, device=DEVICE, dtype=torch.bfloat16) for _ in range(2))
        w9 = torch.randn(D, 9, device=DEVICE, dtype=torch.bfloat16)
        bias = torch.randn(D, device=DEVICE, dtype=torch.bfloat16)
        ref_fwd = [K.conv_fwd(x, w9, bias, side, side)]
        ref_bwd = list(K.conv_bwd(dy, x, w9, side, side))
        for kernel, tiles, ref in (("fwd", SWEEP_FWD, ref_fwd), ("bwd", SWEEP_BWD, ref_bwd)):
            for bt, bd, warps, *fused in tiles:
                kw = dict(block_t=bt, block_d=bd, warps=warps)
                if fused:
                    kw["fused"] = fused[0]
                if kernel == "fwd":
                    fn = lambda: [K.conv_fwd(x, w9, bias, side, side, **kw)]  # noqa: E731
                else:
                    fn = lambda: list(K.conv_bwd(dy, x, w9, side, side, **kw))  # noqa: E731
                try:
                    err = max(rel(a, r) for a, r in zip(fn(), ref))
                    ms = graph_ms(fn, reps)
                except Exception as exc:  # recorded; a tile that fails to compile is just not an option
                    print(f"  sweep {name:14} {kernel} {bt}x{bd} w{warps}: {type(exc).__name__}: {exc}")
                    err, ms = float("nan"), float("nan")
                rows.append(dict(case=name, B=B, T=T, D=D, kernel=kernel, block_t=bt, block_d=bd, warps=warps,
                                 fused=kw.get("fused"), graph_ms=ms, max_rel_diff_vs_default=err))
                tag = "" if not fused else (" fused" if fused[0] else " split")
                print(f"  sweep {name:14} {kernel} tile {bt:3d}x{bd:3d} warps {warps}{tag}: {ms:7.3f} ms"
                      f"  (vs default {err:.1e})", flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "benchmarks/results"),
                        help="folder for dwconv_gpu_check.json (default $OUT, else benchmarks/results)")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--no-sweep", action="store_true", help="skip the Triton tile sweep")
    parser.add_argument("--cases", nargs="+", default=None,
                        help="only shapes whose name contains one of these texts (default: all)")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="run the code paths on the CPU under TRITON_INTERPRET=1 with tiny shapes "
                             "(checks the script without a GPU; timings meaningless)")
    args = parser.parse_args(argv)
    global DEVICE
    if args.cpu_smoke:
        if os.environ.get("TRITON_INTERPRET") != "1":
            parser.error("--cpu-smoke needs TRITON_INTERPRET=1 in the environment")
        DEVICE = "cpu"
    elif not torch.cuda.is_available():
        print(no_gpu_message("check_dwconv_gpu"))
        return 0
    shapes = SMOKE_SHAPES if args.cpu_smoke else SHAPES
    shapes = [s for s in shapes if args.cases is None or any(c in s[0] for c in args.cases)]
    path = Path(args.out) / "dwconv_gpu_check.json"
    from gladiff.ops import dwconv_triton as K

    torch.manual_seed(0)
    result = dict(environment(), cpu_smoke=args.cpu_smoke, dwconv_triton_config=dict(K.CONFIG),
                  target_programs=K.TARGET_PROGRAMS, tolerances=TOL, reference="F.conv2d in float64 on a transposed (NCHW) copy",
                  metric="||out - ref|| / ||ref||", partial=True)
    print("correctness (float64 F.conv2d reference):", flush=True)
    result["check"] = check(shapes)
    write_json(path, result)  # saved after each stage, so a run cut short keeps what it did
    result["copy_bandwidth_gbs"] = copy_gbs = copy_bandwidth_gbs(2**30) if DEVICE == "cuda" else 1.0
    print(f"timing (bf16; copy bandwidth {copy_gbs:.0f} GB/s):", flush=True)
    result["timing"] = bench(shapes, args.reps, copy_gbs)
    write_json(path, result)
    if not args.no_sweep:
        print("Triton tile sweep (bf16, CUDA graph):", flush=True)
        result["sweep"] = sweep(shapes, args.reps)
    result["all_ok"] = all(r["ok"] for r in result["check"])
    result["partial"] = False
    write_json(path, result)
    print(f"\nall checks within tolerance: {result['all_ok']}\nwrote {path}")
    return 0 if result["all_ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
