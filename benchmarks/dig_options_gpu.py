"""A/B of DiG's execution options on one GPU: what each one buys in time and memory.

    python benchmarks/dig_options_gpu.py --size XL/2 --res 256 --batch 32 --out DIR

Variants (each a whole training step under ``--mode``, default compile+graph, the best mode):
``all`` (both model options on: ``fuse_projections``, one GEMM for q/k/v/g/gate, off by default;
``recompute_elementwise``, gate, gated norm and SwiGLU regions recomputed in backward), then each
turned off alone (``no_fuse_projections`` is the default model), and ``dwconv_triton`` (our Triton
conv instead of the default cuDNN one, with both options on). It also lists
what autograd keeps for one compiled block (``--saved``): shapes, dtypes and sizes in units of
``B*T*D`` bf16 values, the number the activation memory scales with. Writes
``DIR/dig_options_<card>_<size>_<res>_b<batch>.json`` with the card, versions and command.
"""
from __future__ import annotations

import argparse
import gc
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gladiff.bench.common import environment, no_gpu_message, write_json  # noqa: E402
from gladiff.bench.model import MODES, _Case, _measure  # noqa: E402

VARIANTS = ("all", "no_fuse_projections", "no_recompute_elementwise", "dwconv_triton")


def configure(model, variant: str) -> None:
    for block in model.blocks:
        block.attn.fuse_projections = variant != "no_fuse_projections"
        block.attn.recompute_elementwise = block.mlp.recompute_elementwise = variant != "no_recompute_elementwise"
    model.set_dwconv_backend("triton" if variant == "dwconv_triton" else "auto")


def saved_by_one_block(case: _Case, variant: str) -> dict:
    """What autograd keeps for block 1 of the compiled model (activations only, no parameters)."""
    model = case.model
    configure(model, variant)
    block = model.blocks[1]
    B, latent = case.x.shape[0], case.x.shape[-1]
    grid = (latent // model.patch_size, latent // model.patch_size)
    T, D = grid[0] * grid[1], model.hidden_size
    x = torch.randn(B, T, D, device="cuda", requires_grad=True)
    c = torch.randn(B, D, device="cuda", requires_grad=True)
    fn = torch.compile(lambda a, b: block(a, b, grid), fullgraph=True)
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = (tuple(t.shape), str(t.dtype), t.untyped_storage().nbytes())
        return t

    with torch.autocast("cuda", dtype=torch.bfloat16):
        fn(x, c).float().sum().backward()  # compile forward and backward
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = fn(x, c)
    out.float().sum().backward()
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    unit = B * T * D * 2
    kept = [dict(shape=s, dtype=d, units=round(n / unit, 3)) for ptr, (s, d, n) in seen.items()
            if ptr not in params and n >= unit // 64]
    torch._dynamo.reset()
    return dict(variant=variant, tensors=kept, total_units=round(sum(k["units"] for k in kept), 2))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", default="XL/2")
    p.add_argument("--res", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--mode", default="compile+graph", choices=MODES)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument("--saved", nargs="*", default=["all", "no_recompute_elementwise"], choices=VARIANTS,
                   help="variants whose compiled block's saved tensors are listed")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--out", default="benchmarks/results")
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print(no_gpu_message("dig_options_gpu"))
        return 0
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    case = _Case("DiG", args.size, args.res, args.batch, None, "auto")
    report = dict(environment=environment(), size=args.size, res=args.res, batch=args.batch, mode=args.mode,
                  rows=[], saved=[])
    card = torch.cuda.get_device_name().replace(" ", "_")
    path = Path(args.out) / f"dig_options_{card}_{args.size.replace('/', '')}_{args.res}_b{args.batch}.json"
    for variant in args.saved:
        report["saved"].append(saved_by_one_block(case, variant))
        s = report["saved"][-1]
        print(f"saved by one compiled block, {variant}: {s['total_units']} units of B*T*D bf16")
        for t in s["tensors"]:
            print(f"    {t['shape']} {t['dtype']} {t['units']}")
        write_json(path, report)
    for variant in args.variants:
        configure(case.model, variant)
        row = dict(variant=variant, **_measure(case, "train", args.mode, args.reps))
        row["img_s"] = args.batch / row["ms"] * 1e3
        report["rows"].append(row)
        print(f"DiG-{args.size} {args.res}px b{args.batch} {args.mode} {variant:26} {row['ms']:8.2f} ms "
              f"{row['img_s']:8.1f} img/s  peak {row['peak_gb']:.2f} GB", flush=True)
        torch._dynamo.reset()
        gc.collect()
        torch.cuda.empty_cache()
        write_json(path, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
