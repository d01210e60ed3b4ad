"""Time our Triton GLA kernels (forward + backward) over implementations (sequential
``triton_chunk``, chunk-parallel ``triton_parallel``) and launch configurations (chunk size, warps,
bf16 or tf32 operands, segment length, fused or split backward and register cap for the sequential
kernels) at
DiG's shapes; kernel time from
CUDA-graph replays (no launch overhead). Each configuration's outputs are compared with the default
sequential configuration's, so a fast but wrong variant shows. Prints the configuration with the best
geometric-mean time over the shapes, as a GLADIFF_GLA_TRITON string (also written to --best).

    python benchmarks/tune_gla_triton.py [--out benchmarks/results/gla_triton_tune.json] [--best FILE]
    python benchmarks/tune_gla_triton.py --impls sequential parallel --configs 32:tf32 \
        --shapes 32,6,256 32,18,256 1,6,16384 4,6,16384
    python benchmarks/tune_gla_triton.py --impls sequential --bwds fused split onepass --configs 32:bf16-scores \
        --warps 4 8 --maxnregs 0 168 128 --shapes 32,6,256 32,18,256 1,6,16384 4,6,16384
"""
from __future__ import annotations

import argparse
import itertools
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gladiff.bench.common import capture_graph, environment, gpu_time_ms, write_json  # noqa: E402
from gladiff.ops.gla import triton_chunk as K  # noqa: E402
from gladiff.ops.gla import triton_parallel as P  # noqa: E402

# DiG-S/2 at 256 (batch 32) and 2048 (batch 1, 4); DiG-XL/2 at 256 (batch 32) and 1024 (batch 2).
SHAPES = [(32, 6, 256), (1, 6, 16384), (4, 6, 16384), (32, 18, 256), (2, 18, 4096)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/gla_triton_tune.json")
    parser.add_argument("--best", default=None, help="write the best GLADIFF_GLA_TRITON string here")
    parser.add_argument("--configs", nargs="+", default=["32:tf32", "64:tf32", "16:bf16", "32:bf16"],
                        help="chunk:operand-precision pairs")
    parser.add_argument("--warps", nargs="+", type=int, default=[4])
    parser.add_argument("--segments", nargs="+", type=int, default=[0],
                        help="0 = automatic (sequential kernels only)")
    parser.add_argument("--impls", nargs="+", default=["sequential", "parallel"], choices=list(K.IMPLS))
    parser.add_argument("--bwds", nargs="+", default=["fused"], choices=list(K.BWDS),
                        help="backwards of the sequential kernels (one kernel, or a dq and a dk/dv/dg launch)")
    parser.add_argument("--maxnregs", nargs="+", type=int, default=[0],
                        help="register caps per thread for the sequential kernels (0: ptxas's choice)")
    parser.add_argument("--prefetch", nargs="+", default=[str(K.CONFIG["prefetch"])], choices=["auto", "0", "1"],
                        help="sequential backward: load the next chunk's tiles before the current chunk's work "
                             "(1), not (0), or only without a register cap (auto)")
    parser.add_argument("--shapes", nargs="+", default=None, help="B,H,T triples (default: DiG's shapes)")
    args = parser.parse_args(argv)
    shapes = [tuple(int(x) for x in s.split(",")) for s in args.shapes] if args.shapes else SHAPES
    if not torch.cuda.is_available():
        print("tune_gla_triton: no CUDA GPU; nothing timed.")
        return 0
    rows = []
    pairs = [(int(c.split(":")[0]), c.split(":")[1]) for c in args.configs]
    # (impl, chunk, warps, dot, segment, bwd, maxnreg, prefetch); the parallel kernels have no
    # segments, bwd choice, register cap or prefetch here.
    configs = [(impl, chunk, warps, dot, seg, bwd, cap, pf)
               for impl, (chunk, dot), warps, seg, bwd, cap, pf in itertools.product(
                   args.impls, pairs, args.warps, args.segments, args.bwds, args.maxnregs, args.prefetch)
               if impl == "sequential" or (seg == 0 and bwd == args.bwds[0] and cap == args.maxnregs[0]
                                           and pf == args.prefetch[0])]
    configured_prefetch = K.CONFIG["prefetch"]  # each configuration below sets its own
    for B, H, T in shapes:
        q = torch.randn(B, T, H, 32, device="cuda", dtype=torch.bfloat16)
        k = torch.randn_like(q)
        v = torch.randn(B, T, H, 64, device="cuda", dtype=torch.bfloat16)
        g = F.logsigmoid(torch.randn(B, T, H, 32, device="cuda")) / 16
        do = torch.randn_like(v)
        side = int(T ** 0.5)
        args_ = (q, k, v, g)
        K.CONFIG["prefetch"] = configured_prefetch  # the reference: the configured kernels
        o_ref, s0, gs = K.gla_fwd(*args_, 32 ** -0.5, True, True, side, side)
        ref = [o_ref, *K.gla_bwd(*args_, do, s0, gs, 32 ** -0.5, True, True, side, side, bwd="fused")]
        for impl, chunk, warps, dot, seg, bwd, cap, pf in configs:
            M = P if impl == "parallel" else K
            K.CONFIG["prefetch"] = pf if pf == "auto" else int(pf)
            kw = dict(chunk=chunk, num_warps=warps, dot=dot)
            bwd_kw = {}
            if impl == "sequential":
                kw.update(segment=seg or None, maxnreg=cap)
                bwd_kw["bwd"] = bwd
            try:
                o, s0, gs = M.gla_fwd(*args_, 32 ** -0.5, True, True, side, side, **kw)
                out = [o, *M.gla_bwd(*args_, do, s0, gs, 32 ** -0.5, True, True, side, side, **kw, **bwd_kw)]
                diff = max(((a.float() - r.float()).norm() / r.float().norm()).item() for a, r in zip(out, ref))
                fwd_graph = capture_graph(lambda: M.gla_fwd(*args_, 32 ** -0.5, True, True, side, side, **kw))
                bwd_graph = capture_graph(lambda: M.gla_bwd(*args_, do, s0, gs, 32 ** -0.5, True, True, side, side,
                                                            **kw, **bwd_kw))
                fwd_ms = gpu_time_ms(fwd_graph.replay, warmup=3, reps=20)
                bwd_ms = gpu_time_ms(bwd_graph.replay, warmup=3, reps=20)
            except Exception as err:
                print(f"{(B, H, T)} {impl} {kw}: {type(err).__name__}: {str(err)[:200]}", flush=True)
                continue
            # The parallel kernels have no segments: one "segment" per chunk, reported as such.
            seg_len, nseg = K.plan_segments(B * H, T, kw["segment"], chunk) if impl == "sequential" else \
                (chunk, triton.cdiv(T, chunk))
            bwd, cap, pf = (bwd, cap, pf) if impl == "sequential" else ("-", 0, 0)
            rows.append(dict(B=B, H=H, T=T, impl=impl, chunk=chunk, warps=warps, dot=dot, segment=seg_len,
                             nseg=nseg, auto=not seg, bwd=bwd, maxnreg=cap, prefetch=pf, fwd_ms=fwd_ms, bwd_ms=bwd_ms, total_ms=fwd_ms + bwd_ms,
                             rel_diff_vs_default=diff))
            print(f"{str((B, H, T)):15} {impl:10} chunk {chunk:3d} w{warps} {dot:11} seg {seg_len:5d}x{nseg:<4d} "
                  f"bwd {bwd:5} maxnreg {cap:3d} prefetch {pf}: "
                  f"fwd {fwd_ms:.3f} bwd {bwd_ms:.3f} total {fwd_ms + bwd_ms:.3f} ms  diff {diff:.1e}", flush=True)
    K.CONFIG["prefetch"] = configured_prefetch
    # Best configuration overall: geometric mean over shapes of time / best time for that shape.
    best_per_shape = {}
    for r in rows:
        key = (r["B"], r["H"], r["T"])
        best_per_shape[key] = min(best_per_shape.get(key, math.inf), r["total_ms"])
    scores = {}
    key_of = lambda r: (r["impl"], r["chunk"], r["warps"], r["dot"], r["bwd"], r["maxnreg"], r["prefetch"])  # noqa: E731
    for impl, chunk, warps, dot, seg, bwd, cap, pf in configs:
        bwd, cap, pf = (bwd, cap, pf) if impl == "sequential" else ("-", 0, 0)
        sel = [r for r in rows if key_of(r) == (impl, chunk, warps, dot, bwd, cap, pf)
               and r["auto"] == (not seg) and r["rel_diff_vs_default"] < 2e-2]
        if len(sel) == len(best_per_shape):
            scores[(impl, chunk, warps, dot, seg, bwd, cap, pf)] = math.exp(sum(math.log(r["total_ms"] / best_per_shape[(r["B"], r["H"], r["T"])])
                                                            for r in sel) / len(sel))
    print("\nper shape, best total (fwd+bwd) kernel time:")
    # Best per implementation, the sequential one per backward ("sequential/split").
    label = lambda r: r["impl"] if r["impl"] == "parallel" else f"sequential/{r['bwd']}"  # noqa: E731
    # (and per register cap where several were swept: "sequential/split/168")
    if len(args.maxnregs) > 1 or len(args.prefetch) > 1:
        label = lambda r: (r["impl"] if r["impl"] == "parallel"  # noqa: E731
                           else f"sequential/{r['bwd']}/{r['maxnreg']}/w{r['warps']}/pf{r['prefetch']}")
    labels = list(dict.fromkeys(label(r) for r in rows))
    for key, ms in best_per_shape.items():
        per_impl = {name: min((r["total_ms"] for r in rows if (r["B"], r["H"], r["T"]) == key and label(r) == name),
                              default=math.nan) for name in labels}
        print(f"  {key}: {ms:.3f} ms  (" + ", ".join(f"{i} {t:.3f}" for i, t in per_impl.items()) + ")")
    best = None
    if scores:
        (impl, chunk, warps, dot, seg, bwd, cap, pf), score = min(scores.items(), key=lambda x: x[1])
        best = f"chunk={chunk},warps={warps},dot={dot},impl={impl}" + (
            f",bwd={bwd},maxnreg={cap},prefetch={pf}" if impl == "sequential" else "")
        print(f"best configuration (geometric mean {score:.3f} of per-shape best): GLADIFF_GLA_TRITON={best}")
        for key in best_per_shape:
            r = next(r for r in rows if (r["B"], r["H"], r["T"]) == key and
                     key_of(r) == (impl, chunk, warps, dot, bwd, cap, pf) and r["auto"])
            print(f"  {key}: fwd {r['fwd_ms']:.3f} bwd {r['bwd_ms']:.3f} total {r['total_ms']:.3f} ms")
        if args.best:
            Path(args.best).write_text(best + "\n")
    write_json(args.out, dict(environment(), kind="gla_triton_tune", rows=rows, best=best))
    return 0


if __name__ == "__main__":
    sys.exit(main())
