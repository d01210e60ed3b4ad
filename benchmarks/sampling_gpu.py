"""Sampling on a GPU: the whole DDIM loop with guidance, eager vs CUDA-graph replays vs compile+graph.

    python benchmarks/sampling_gpu.py --out DIR [--models DiG-S/2 DiT-S/2] [--res 256] [--batch 32]

Random weights (every parameter drawn N(0, 0.02), so the adaLN-Zero gates are not zero and the
network does real work), bf16 autocast, DDIM 50 steps, guidance 1.5 (each step one batched
cond + null pass of 2 x batch images). For each execution (``gladiff.sample.for_sampling``) it times
one whole sampling run after a warm-up run (which captures/compiles) and compares the samples with
eager's: ``graph`` replays the same kernels, so it must match eager to rounding; ``compile`` may
reassociate. Writes ``DIR/sampling_<card>.json`` with the card, versions and command.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gladiff import create_model  # noqa: E402
from gladiff.bench.common import environment, no_gpu_message, write_json  # noqa: E402
from gladiff.diffusion import create_objective  # noqa: E402
from gladiff.sample import for_sampling  # noqa: E402


def sample_once(model, objective, y, shape, steps):
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        x = objective.sample(model, shape, y, sampler="ddim", steps=steps, cfg_scale=1.5, seed=0,
                             device="cuda", progress=False)
    torch.cuda.synchronize()
    return x.float(), time.perf_counter() - start


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--models", nargs="+", default=["DiG-S/2", "DiT-S/2"])
    p.add_argument("--res", type=int, default=256)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--executions", nargs="+", default=["eager", "graph", "compile+graph"])
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print(no_gpu_message("sampling benchmark"))
        return 0
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    latent = args.res // 8
    objective = create_objective("ddpm")
    y = torch.arange(args.batch, device="cuda") % 1000
    shape = (args.batch, 4, latent, latent)
    rows = []
    for name in args.models:
        torch.manual_seed(0)
        model = create_model(name, input_size=latent, in_channels=4, num_classes=1000).cuda().eval()
        with torch.no_grad():
            for prm in model.parameters():
                prm.normal_(0, 0.02)
        reference = None
        for execution in args.executions:
            runner = for_sampling(model, execution, "cuda")
            sample_once(runner, objective, y, shape, 2)  # warm-up: compile / capture
            torch.cuda.reset_peak_memory_stats()
            x, seconds = sample_once(runner, objective, y, shape, args.steps)
            if reference is None:
                reference = x
            diff = (x - reference).abs().max().item()
            row = dict(model=name, res=args.res, batch=args.batch, steps=args.steps, execution=execution,
                       seconds=seconds, img_s=args.batch / seconds, ms_per_step=seconds / args.steps * 1e3,
                       max_abs_diff_vs_eager=diff, sample_std=x.std().item(),
                       peak_gb=torch.cuda.max_memory_allocated() / 2**30)
            rows.append(row)
            print(f"{name} {args.res}px b{args.batch} {execution:14} {row['ms_per_step']:8.2f} ms/step "
                  f"{row['img_s']:8.1f} img/s  max|x - eager| {diff:.2e}  peak {row['peak_gb']:.2f} GB", flush=True)
        del model
        torch.cuda.empty_cache()
    card = torch.cuda.get_device_name().replace(" ", "_")
    write_json(Path(args.out) / f"sampling_{card}.json", dict(environment=environment(), rows=rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
