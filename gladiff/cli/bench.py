"""`gladiff bench`: DiG vs DiT throughput and memory (the protocol of docs/benchmark_protocol.md), or
with ``--op`` the token mixer alone (GLA vs SDPA). Writes JSON (and a plot) into ``benchmarks/results/``.
Needs a CUDA GPU: without one it exits with an error, as it does when no measurement succeeded."""
from __future__ import annotations

import argparse
import time

from ..bench.common import environment, write_json
from ..errors import GladiffError, UsageError, check_output_file
from ..models.compiled import COMPILE_SCOPES
from ..ops.dwconv import BACKENDS as DWCONV_BACKENDS


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="benchmark DiG vs DiT (or --op: the token mixer alone) on a GPU",
                              description=__doc__)
    p.add_argument("--op", action="store_true", help="time the GLA token mixer alone against SDPA")
    p.add_argument("--models", nargs="+", default=["S/2", "XL/2"], help="model sizes (default S/2 XL/2)")
    p.add_argument("--res", nargs="+", type=int, default=None,
                   help="image resolutions (default 256..2048 step 256; latent = res/8)")
    p.add_argument("--batch", nargs="+", type=int, default=[],
                   help="extra fixed batch sizes besides max(1, 32*(256/res)^2)")
    p.add_argument("--no-default-batch", action="store_true",
                   help="measure only the --batch sizes, not max(1, 32*(256/res)^2) as well")
    p.add_argument("--families", nargs="+", default=["DiG", "DiT"], choices=["DiG", "DiT"],
                   help="model families to measure (default both; the ratio needs both)")
    p.add_argument("--work", nargs="+", default=["train", "sample"], choices=["train", "sample"],
                   help="what is timed: a training step and/or a sampling forward pass (default both)")
    p.add_argument("--modes", nargs="+", default=None,
                   help="execution modes to try (eager compile graph); the best counts")
    p.add_argument("--dit-attn", nargs="+", default=["flash", "cudnn"], choices=["flash", "cudnn"],
                   help="SDPA backends tried for DiT; the fastest counts")
    p.add_argument("--gla-backends", nargs="+", default=None,
                   help="--op: GLA backends (default triton fla; triton-sequential / triton-parallel pick "
                        "the Triton kernels' implementation)")
    p.add_argument("--op-shapes", nargs="+", default=None, metavar="B,H,T",
                   help="--op: (batch, heads, tokens) shapes (default 32,6,256 1,6,16384 4,6,16384)")
    p.add_argument("--dwconv-backend", default="auto", choices=DWCONV_BACKENDS,
                   help="DiG's depth-wise conv (auto = torch: cuDNN on channels-last, measured faster; "
                        "triton: our kernels)")
    p.add_argument("--compile-scope", nargs="+", default=["model"], choices=COMPILE_SCOPES,
                   help="compiled modes run under each: the whole model (default) and/or each block "
                        "(regional compilation: compile time independent of depth, no fusion across blocks)")
    p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/<kind>_<card>_<time>.json)")
    p.add_argument("--plot", default=None, help="PNG path for the throughput/memory plot (model bench)")
    p.add_argument("--reps", type=int, default=10, help="timed repeats per measurement (median)")
    p.add_argument("--max-minutes", type=float, default=None,
                   help="stop starting new measurements after this long (partial results are kept)")
    p.set_defaults(func=run)


def _default_out(kind: str, env: dict) -> str:
    card = (env.get("card") or "cpu").replace(" ", "_").replace("/", "_")
    return f"benchmarks/results/{kind}_{card}_{time.strftime('%Y%m%d-%H%M%S')}.json"


def _op_shape(text: str) -> tuple[int, int, int]:
    """``"B,H,T"`` -> ``(B, H, T)``."""
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise UsageError(f"--op-shapes: expected B,H,T (three positive integers), got {text!r}")
    return tuple(int(p) for p in parts)


def check_args(args) -> None:
    """``UsageError`` for a flag that cannot work, before anything is measured (or a GPU is looked for)."""
    from ..bench.model import MODES
    from ..models import model_config

    for size in args.models:
        model_config(f"DiG-{size}")  # UsageError naming the zoo for an unknown size
    for flag in ("res", "batch"):
        for value in getattr(args, flag) or ():
            if value < 1:
                raise UsageError(f"--{flag} values must be >= 1, got {value}")
    for flag in ("reps", "max_minutes"):
        value = getattr(args, flag)
        if value is not None and value <= 0:
            raise UsageError(f"--{flag.replace('_', '-')} must be > 0, got {value}")
    for mode in args.modes or ():
        if mode not in MODES:
            raise UsageError(f"--modes: unknown mode {mode!r}; choose from {' '.join(MODES)}")
    for shape in args.op_shapes or ():
        _op_shape(shape)
    if args.out:
        check_output_file(args.out, "--out", (".json",))
    if args.plot:
        check_output_file(args.plot, "--plot", (".png",))


def run(args) -> int:
    import torch

    check_args(args)
    if not torch.cuda.is_available():
        raise GladiffError("no CUDA GPU on this machine; nothing measured (run it on a machine with a GPU)")
    env = environment()
    if args.op:
        from ..bench.op import format_rows, run_op_bench

        shapes = [_op_shape(s) for s in args.op_shapes] if args.op_shapes else None
        rows = run_op_bench(shapes=shapes, gla_backends=tuple(args.gla_backends or ("triton", "fla")),
                            sdpa_backends=tuple(args.dit_attn))
        print(f"\ncard: {env['card']}\n" + format_rows(rows))
        path = write_json(args.out or _default_out("op", env), dict(env, kind="op", rows=rows))
        print(f"wrote {path}")
        if not any(r["eager_ms"] is not None for r in rows):
            raise GladiffError(f"no measurement succeeded (the failures are printed above and kept in {path})")
        return 0
    from ..bench.model import format_rows as format_model_rows
    from ..bench.model import plot_rows, run_model_bench

    out = args.out or _default_out("model", env)
    # Saved after every measurement, so a run cut short keeps what it measured.
    save = lambda result: write_json(out, dict(env, kind="model", **result))
    result = run_model_bench(models=args.models, resolutions=args.res, extra_batches=args.batch,
                             work=args.work, modes=args.modes, dit_attn=args.dit_attn, reps=args.reps,
                             dwconv_backend=args.dwconv_backend, compile_scopes=args.compile_scope,
                             max_minutes=args.max_minutes, on_row=save, families=args.families,
                             default_batches=not args.no_default_batch)
    path = save(result)
    print(f"\ncard: {env['card']}, bf16 matmul ceiling {result['matmul_tflops']:.0f} TFLOP/s\n"
          + format_model_rows(result["summary"]))
    print(f"wrote {path}")
    plot = args.plot or str(path).replace(".json", ".png")
    if plot_rows(result["summary"], plot):
        print(f"wrote {plot}")
    if not any("img_s" in r for r in result["rows"]):
        raise GladiffError(f"no measurement succeeded (the failures are printed above and kept in {path})")
    return 0
