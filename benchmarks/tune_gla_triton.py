"""Time our Triton GLA kernels (forward, backward) over launch variants: segment length, warps,
pipelining stages, at the issue's shapes. Kernel time from CUDA-graph replays (no launch overhead).

    python benchmarks/tune_gla_triton.py [--out benchmarks/results/gla_triton_tune.json]
"""
from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gladiff.bench.common import capture_graph, environment, gpu_time_ms, write_json  # noqa: E402
from gladiff.ops.gla import triton_chunk as K  # noqa: E402

SHAPES = [(32, 6, 256), (1, 6, 16384), (4, 6, 16384)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/gla_triton_tune.json")
    parser.add_argument("--segments", nargs="+", type=int, default=[0, 256, 512, 1024])
    parser.add_argument("--warps", nargs="+", type=int, default=[4, 8])
    parser.add_argument("--stages", nargs="+", type=int, default=[1, 2])
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("tune_gla_triton: no CUDA GPU; nothing timed.")
        return 0
    rows = []
    for B, H, T in SHAPES:
        q = torch.randn(B, T, H, 32, device="cuda", dtype=torch.bfloat16)
        k = torch.randn_like(q)
        v = torch.randn(B, T, H, 64, device="cuda", dtype=torch.bfloat16)
        g = F.logsigmoid(torch.randn(B, T, H, 32, device="cuda")) / 16
        do = torch.randn_like(v)
        side = int(T ** 0.5)
        for seg, warps, stages in itertools.product(args.segments, args.warps, args.stages):
            segment = None if seg == 0 else seg
            if segment is not None and segment >= 2 * T:
                continue
            kw = dict(segment=segment, num_warps=warps, num_stages=stages)
            try:
                o, s0, gs = K.gla_fwd(q, k, v, g, 32 ** -0.5, True, True, side, side, **kw)
                fwd = capture_graph(lambda: K.gla_fwd(q, k, v, g, 32 ** -0.5, True, True, side, side, **kw))
                bwd = capture_graph(lambda: K.gla_bwd(q, k, v, g, do, s0, gs, 32 ** -0.5, True, True,
                                                      side, side, **kw))
                fwd_ms = gpu_time_ms(fwd.replay, warmup=3, reps=20)
                bwd_ms = gpu_time_ms(bwd.replay, warmup=3, reps=20)
            except Exception as err:
                print(f"{(B, H, T)} {kw}: {type(err).__name__}: {str(err)[:200]}")
                continue
            seg_len, nseg = K.plan_segments(B * H, T, segment)
            rows.append(dict(B=B, H=H, T=T, segment=seg_len, nseg=nseg, auto=segment is None, warps=warps,
                             stages=stages, fwd_ms=fwd_ms, bwd_ms=bwd_ms, total_ms=fwd_ms + bwd_ms))
            print(f"{(B, H, T)} seg {seg_len:5d} x{nseg:4d}{' auto' if segment is None else '     '} "
                  f"w{warps} s{stages}: fwd {fwd_ms:.3f} bwd {bwd_ms:.3f} total {fwd_ms + bwd_ms:.3f} ms")
    print("\nbest per shape (kernel time, graph replay):")
    for B, H, T in SHAPES:
        sel = [r for r in rows if (r["B"], r["H"], r["T"]) == (B, H, T)]
        if sel:
            best = min(sel, key=lambda r: r["total_ms"])
            auto = min((r for r in sel if r["auto"]), key=lambda r: r["total_ms"], default=None)
            print(f"{(B, H, T)}: best {best['total_ms']:.3f} ms (seg {best['segment']} w{best['warps']} "
                  f"s{best['stages']}); auto-segment best {auto and round(auto['total_ms'], 3)}")
    write_json(args.out, dict(environment(), kind="gla_triton_tune", rows=rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
