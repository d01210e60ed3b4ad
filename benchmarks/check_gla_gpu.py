"""GPU correctness of the GLA backends against the exact recurrence computed in float64.

For fresh random inputs (new draws per case), every backend's output and gradients (dq, dk, dv, dg)
are compared with ``backend="recurrent"`` run in float64 on the same (up-cast) inputs, as
``||out - ref|| / ||ref||``; float32 and bf16 (bf16 q/k/v with float32 log-gates, as DiG calls it),
all four scan orders, several shapes including odd T, very negative gates, and head sizes that are
not powers of two. Outputs are poisoned with NaN before each run (the allocator hands back the
poisoned memory), so an unwritten element shows as NaN and fails.

    python benchmarks/check_gla_gpu.py [--backends chunk fla triton] [--out benchmarks/results/...]
    python benchmarks/check_gla_gpu.py --backends triton --impls sequential parallel

``--impls`` checks each named implementation of the Triton kernels (``triton_chunk.CONFIG["impl"]``)
in the same process; its rows are labelled ``triton-<impl>``. ``--bwds fused split onepass`` checks
each backward of the sequential implementation (``CONFIG["bwd"]``), rows ``triton-sequential-<bwd>``:

    python benchmarks/check_gla_gpu.py --backends triton --impls sequential --bwds fused split onepass
"""
from __future__ import annotations

import argparse
import contextlib
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gladiff.bench.common import environment, write_json  # noqa: E402
from gladiff.ops.gla import available_backends, gla, triton_impl  # noqa: E402

ORDERS = [("row", False), ("row", True), ("col", False), ("col", True)]
# (name, B, H, grid (h, w), dk, dv, gate scale)
CASES = [
    ("odd T 37 (1x37)", 2, 3, (1, 37), 32, 64, 1.0),
    ("T 255 odd grid 15x17", 2, 6, (15, 17), 32, 64, 1.0),
    ("S/2 256px: T 256", 4, 6, (16, 16), 32, 64, 1.0),
    ("T 1024, many segments", 1, 2, (32, 32), 32, 64, 1.0),
    ("head sizes 20/40", 2, 2, (10, 10), 20, 40, 1.0),
    ("very negative gates (x30)", 2, 2, (8, 16), 32, 64, 30.0),
    # 128 chunks of 32: four blocks of the parallel kernels' state scan; weak decay (about exp(-0.3)
    # per chunk) so that states and their gradients cross the blocks.
    ("T 4096 weak gates, scan blocks", 1, 2, (64, 64), 32, 64, 0.01),
]
TOL = {"float32": 1e-3, "bfloat16": 1e-2}


def make_inputs(B, T, H, dk, dv, gate_scale, device):
    """q, k, v, do exactly representable in bf16 (so one float64 reference serves float32 and bf16
    runs); log-gates float32, as DiG passes them."""
    bf = lambda *shape: torch.randn(*shape, device=device).bfloat16().float()
    q, k, v = bf(B, T, H, dk), bf(B, T, H, dk), bf(B, T, H, dv)
    # Stronger decay than DiG's logsigmoid(.)/16 so that the test sees it; a gate scale > 1 pushes
    # log-gates to hundreds below zero, where a positive exponent anywhere would overflow.
    spread = 2.0 if gate_scale == 1 else 4.0
    g = F.logsigmoid(torch.randn(B, T, H, dk, device=device) * spread) * gate_scale
    return q, k, v, g, bf(B, T, H, dv)


def poison(n_bytes: int = 512 * 2**20):
    """Fill free allocator memory with NaN so that unwritten outputs show up."""
    x = torch.full((n_bytes // 4,), float("nan"), device="cuda")
    del x


@contextlib.contextmanager
def triton_bwd(name):
    """Inside the block the sequential Triton kernels use backward ``name`` (one of
    ``triton_chunk.BWDS``; None: as configured)."""
    if name is None:
        yield
        return
    from gladiff.ops.gla import triton_chunk
    before, triton_chunk.CONFIG["bwd"] = triton_chunk.CONFIG["bwd"], name
    try:
        yield
    finally:
        triton_chunk.CONFIG["bwd"] = before


def run(backend, q, k, v, g, do, scan, reverse, grid):
    """``[o, dq, dk, dv, dg]`` of ``backend`` (``"triton-<impl>"``: the Triton backend with that
    implementation of the kernels; ``"triton-sequential-<bwd>"``: and that backward)."""
    backend, _, impl = backend.partition("-")
    impl, _, bwd = impl.partition("-")
    xs = [x.detach().clone().requires_grad_(True) for x in (q, k, v, g)]
    poison()
    with triton_impl(impl or None), triton_bwd(bwd or None):
        o = gla(*xs, scan=scan, reverse=reverse, grid=grid, backend=backend)
        grads = torch.autograd.grad(o, xs, do)
    return [o.detach()] + list(grads)


def rel(a, b):
    a, b = a.double(), b.double()
    return (torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b)).item()


def main(argv=None):
    try:
        from gladiff.ops.gla.triton_chunk import BWDS
    except ImportError:  # no Triton: no backward to choose
        BWDS = ()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", nargs="+", default=None, help="default: every GPU backend available")
    parser.add_argument("--out", default="benchmarks/results/gla_gpu_check.json")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    parser.add_argument("--cases", nargs="+", default=None,
                        help="only cases whose name contains one of these texts (default: all)")
    parser.add_argument("--impls", nargs="+", default=None, choices=["sequential", "parallel"],
                        help="check the triton backend with each of these kernel implementations "
                             "(default: the configured one, GLADIFF_GLA_TRITON impl=...)")
    parser.add_argument("--bwds", nargs="+", default=None, choices=list(BWDS),
                        help="check the sequential kernels with each of these backwards (default: the "
                             "configured one, GLADIFF_GLA_TRITON bwd=...); rows triton-sequential-<bwd>")
    args = parser.parse_args(argv)
    cases = [c for c in CASES if args.cases is None or any(s in c[0] for s in args.cases)]
    if not torch.cuda.is_available():
        print("check_gla_gpu: no CUDA GPU on this machine; nothing checked.")
        return 0
    backends = args.backends or [b for b in available_backends("cuda") if b != "recurrent"]
    if args.impls:
        backends = [v for b in backends for v in ([f"triton-{i}" for i in args.impls] if b == "triton" else [b])]
    if args.bwds:
        backends = [v for b in backends for v in (
            [f"triton-sequential-{w}" for w in args.bwds] if b in ("triton", "triton-sequential") else [b])]
    torch.manual_seed(0)
    rows = []
    names = ["o", "dq", "dk", "dv", "dg"]
    for name, B, H, grid, dk, dv, gate_scale in cases:
        print(f"case {name}: B {B} H {H} grid {grid} dk {dk} dv {dv}", flush=True)
        T = grid[0] * grid[1]
        for scan, reverse in ORDERS:
            q, k, v, g, do = make_inputs(B, T, H, dk, dv, gate_scale, "cuda")
            ref = run("recurrent", *(x.double() for x in (q, k, v, g, do)), scan, reverse, grid)
            for dtype in args.dtypes:
                dtype = getattr(torch, dtype)
                qd, kd, vd, dod = (x.to(dtype) for x in (q, k, v, do))
                for backend in backends:
                    try:
                        out = run(backend, qd, kd, vd, g, dod, scan, reverse, grid)
                        errs = {n: rel(a, r) for n, a, r in zip(names, out, ref)}
                    except Exception as err:  # recorded, and counted as a failure
                        errs = {n: float("nan") for n in names}
                        print(f"{backend} {name} {scan}{'-rev' if reverse else ''} {dtype}: "
                              f"{type(err).__name__}: {err}")
                    dname = str(dtype).replace("torch.", "")
                    worst = max(errs.values())
                    ok = not math.isnan(worst) and worst <= TOL[dname]
                    rows.append(dict(case=name, B=B, T=T, H=H, grid=grid, dk=dk, dv=dv, gate_scale=gate_scale,
                                     scan=scan, reverse=reverse, dtype=dname, backend=backend,
                                     rel_err=errs, tol=TOL[dname], ok=ok))
        # Saved after every case, so a run cut short keeps what it checked.
        write_json(args.out, dict(environment(), tolerances=TOL, reference="recurrent, float64",
                                  metric="||out - ref|| / ||ref||", partial=True, rows=rows))
    # Table: worst error per backend, dtype, case over the four scan orders.
    print(f"\n{'backend':23} {'dtype':9} {'case':28} " + " ".join(f"{n:>8}" for n in names) + "  ok")
    for backend in backends:
        for dname in args.dtypes:
            for name, *_ in cases:
                sel = [r for r in rows if r["backend"] == backend and r["dtype"] == dname and r["case"] == name]
                if not sel:
                    continue
                worst = {n: max(r["rel_err"][n] for r in sel) for n in names}
                ok = all(r["ok"] for r in sel)
                print(f"{backend:23} {dname:9} {name:28} " + " ".join(f"{worst[n]:8.1e}" for n in names)
                      + f"  {'yes' if ok else 'NO'}")
    summary = {b: all(r["ok"] for r in rows if r["backend"] == b) for b in backends}
    print("\nall cases within tolerance:", summary)
    path = write_json(args.out, dict(environment(), tolerances=TOL, reference="recurrent, float64",
                                     metric="||out - ref|| / ||ref||", summary=summary, rows=rows))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
