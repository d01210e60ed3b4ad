"""Where a DiG / DiT training step spends its GPU time: torch.profiler over a few steps (eager, or
compiled with ``--compile``), kernels grouped into categories (GEMM, GLA kernels, attention, conv,
norms / elementwise, optimizer, copies).

    python benchmarks/profile_step.py --model DiG-XL/2 --res 256 --batch 32 [--compile [--compile-scope blocks]]
        [--dwconv-backend torch]
        [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gladiff.bench.common import environment  # noqa: E402
from gladiff.bench.model import _Case  # noqa: E402
from gladiff.models.compiled import COMPILE_SCOPES, compile_model  # noqa: E402
from gladiff.ops.dwconv import BACKENDS as DWCONV_BACKENDS  # noqa: E402

CATEGORIES = [  # first match wins, on the lower-cased kernel name
    ("gla", ("_fwd_kernel", "_bwd_kernel", "_segment_state", "_segment_dstate", "_chunk_states")),
    ("attention", ("flash", "fmha", "cudnn", "attention")),
    ("gemm", ("gemm", "xmma", "cutlass", "nvjet", "matmul", "sm90_", "cublas")),
    ("conv", ("conv", "depthwise", "implicit_convolve", "wgrad", "dgrad")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    # inductor's generated kernels are named after every op they fuse (often "_to_copy" or "cat" next
    # to a norm or an activation): one category, before the name-based ones below.
    ("inductor fused", ("triton_poi_", "triton_red_", "triton_per_", "triton_tem_")),
    ("copy / layout", ("copy", "transpose", "cat", "permute", "elementwise_kernel_with_index")),
    ("norm / reduction", ("norm", "reduce", "softmax", "welford")),
    ("elementwise", ("elementwise", "vectorized", "unrolled", "triton_")),
]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="DiG-XL/2")
    p.add_argument("--res", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--attn", default=None, help="DiT SDPA backend (flash / cudnn)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--compile", action="store_true", help="profile the torch.compile'd model (DiG/DiT's best mode)")
    p.add_argument("--compile-scope", default="model", choices=COMPILE_SCOPES,
                   help="with --compile: the whole model or each block (regional compilation)")
    p.add_argument("--dwconv-backend", default="auto", choices=DWCONV_BACKENDS,
                   help="DiG's depth-wise conv (auto = torch: cuDNN on channels-last, measured faster; "
                        "triton: our kernels)")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("profile_step: no CUDA GPU; nothing profiled.")
        return 0
    family, size = args.model.split("-", 1)
    case = _Case(family, size, args.res, args.batch, args.attn, "auto", args.dwconv_backend)
    case.opt = torch.optim.AdamW(case.model.parameters(), lr=1e-4, weight_decay=0.0, fused=True)
    model = compile_model(case.model, args.compile_scope) if args.compile else case.model
    for _ in range(3):
        case.opt.zero_grad(set_to_none=True)
        case.train_step(model)
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(args.steps):
            case.opt.zero_grad(set_to_none=True)
            case.train_step(model)
        torch.cuda.synchronize()
    kernels = defaultdict(lambda: [0.0, 0])
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA:
            kernels[ev.name][0] += ev.device_time / 1e3 / args.steps  # ms per step
            kernels[ev.name][1] += 1
    cats = defaultdict(float)
    for name, (ms, _) in kernels.items():
        low = name.lower()
        cat = next((c for c, keys in CATEGORIES if any(k in low for k in keys)), "other")
        cats[cat] += ms
    total = sum(cats.values())
    what = f"{args.model} {args.res}px batch {args.batch}{' compiled' if args.compile else ''}"
    print(f"{what}: GPU busy {total:.2f} ms per training step "
          f"({sum(n for _, n in kernels.values()) // args.steps} kernels)")
    for cat, ms in sorted(cats.items(), key=lambda x: -x[1]):
        print(f"  {cat:18} {ms:8.2f} ms  {100 * ms / total:5.1f}%")
    top = sorted(kernels.items(), key=lambda x: -x[1][0])[: args.top]
    for name, (ms, n) in top:
        print(f"  {ms:8.3f} ms x{n // args.steps:4d}  {name[:110]}")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(environment(), model=args.model, res=args.res, batch=args.batch,
                                                  compiled=args.compile and args.compile_scope, dwconv_backend=args.dwconv_backend,
                                                  busy_ms=total, categories=cats,
                                                  top=[dict(name=n, ms=m, calls=c // args.steps)
                                                       for n, (m, c) in top]), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
