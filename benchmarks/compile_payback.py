"""The constants of `--compile auto` and `--execution auto` (`gladiff/models/payback.py`), measured.

    python benchmarks/compile_payback.py --out DIR --work train --models DiG-S/2      # ~2 min on an H200
    python benchmarks/compile_payback.py --out DIR --work train --models DiT-S/2      # ~1.5 min
    python benchmarks/compile_payback.py --out DIR --work sample --models DiG-S/2 DiT-S/2   # ~1.5 min

``--work train``: for each model, two whole ``python -m gladiff train`` runs on the same synthetic
latents (``--res``, ``--batch``, ``--steps``), ``--compile none`` and ``--compile blocks``
(``gladiff.bench.whole_run``): speedup = ratio of the steady rates, setup = the compiled run's extra
warm-up. ``--work sample``: for each model (random weights, N(0, 0.02)), the sampling pipeline's
``generate`` over ``--num-samples`` in batches of ``--batch`` (DDIM ``--steps`` with guidance
``--cfg-scale``, bf16 autocast as ``gladiff sample`` does on a GPU), eager, ``graph`` and
``compile+graph``, each run twice on one wrapped model: per network pass, speedup = eager's warm time
over the execution's, setup = the execution's first-run excess over eager's first-run excess.
Prints the ``SPEEDUPS`` entries to paste into ``gladiff/models/payback.py`` and writes
``DIR/compile_payback_<work>_<card>.json`` (card, versions, command, every run). ``--smoke --work
sample`` runs a tiny model on the CPU, eager and compile (to test the script; the train work has no
smoke run: compiling on a CPU with Inductor takes minutes).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gladiff.bench.common import environment, write_json  # noqa: E402
from gladiff.bench.whole_run import (payback_constants, read_windows, run_command, steady_summary,  # noqa: E402
                                     train_command, write_synthetic_latents)

def measure_train(args, out: Path) -> dict:
    results = {}
    with tempfile.TemporaryDirectory(prefix="compile_payback_") as tmp:
        latents = write_synthetic_latents(Path(tmp) / "latents", args.latents, args.res)
        for name in args.models:
            runs = {}
            for compile in ("none", "blocks"):
                run_dir = Path(tmp) / f"{name.replace('/', '')}_{compile}"
                cmd = train_command(latents, run_dir, model=name, res=args.res, batch=args.batch,
                                    steps=args.steps, compile=compile, log_every=args.log_every,
                                    device="auto")
                run = run_command(cmd, out / f"payback_train_{name.replace('/', '')}_{compile}.log")
                runs[compile] = dict(command=" ".join(cmd), log=read_windows(run_dir),
                                     **steady_summary(read_windows(run_dir), args.batch, run["wall_s"]))
                r = runs[compile]
                print(f"{name} --compile {compile}: {r['steady_img_s']:.1f} img/s, warm-up {r['warmup_s']:.1f} s, "
                      f"wall {r['wall_s']:.1f} s", flush=True)
            results[name] = dict(runs=runs, blocks=payback_constants(runs["none"], runs["blocks"]))
    return results


def _sample_model(name: str, res: int, smoke: bool):
    from gladiff import create_model

    torch.manual_seed(0)
    kw = dict(depth=2, hidden_size=32, num_heads=1) if smoke else {}
    model = create_model(name, input_size=res // 8, in_channels=4, num_classes=1000, **kw)
    with torch.no_grad():
        for prm in model.parameters():  # adaLN-Zero gates away from zero: the network does real work
            prm.normal_(0, 0.02)
    return model.eval().requires_grad_(False)


def measure_sample(args) -> dict:
    from gladiff.diffusion import create_objective
    from gladiff.sample import class_labels, for_sampling, generate
    from gladiff.train.parallel import Dist

    device = torch.device("cpu" if args.smoke else "cuda")
    objective = create_objective("ddpm")
    steps = f"ddim{args.steps}"
    labels = class_labels(args.num_samples, 1000, seed=0)
    batches = -(-args.num_samples // args.batch)
    passes = batches * objective.network_passes("ddim", steps)
    autocast = None if args.smoke else (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
    executions = ["eager", "compile"] if args.smoke else ["eager", "graph", "compile+graph"]

    def timed(runner, model):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        generate(runner, objective, labels, (model.in_channels, args.res // 8, args.res // 8), seed=0,
                 batch_size=args.batch, sampler="ddim", steps=steps, cfg_scale=args.cfg_scale,
                 dist=Dist(device=device), autocast=autocast, progress=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    results = {}
    for name in args.models:
        model = _sample_model(name, args.res, args.smoke).to(device)
        runs = {}
        for execution in executions:
            torch._dynamo.reset()
            runner = for_sampling(model, execution, device, args.compile_scope)
            first, second = timed(runner, model), timed(runner, model)
            runs[execution] = dict(first_s=first, warm_s=second, ms_per_pass=second / passes * 1e3)
            print(f"{name} sample {execution:14} first run {first:7.2f} s, warm {second:7.2f} s, "
                  f"{second / passes * 1e3:7.2f} ms per pass", flush=True)
        eager = runs["eager"]
        options = {ex: {"speedup": eager["warm_s"] / r["warm_s"],
                        "setup_s": max(0.0, (r["first_s"] - r["warm_s"]) - (eager["first_s"] - eager["warm_s"]))}
                   for ex, r in runs.items() if ex != "eager"}
        results[name] = dict(runs=runs, passes_per_run=passes, **options)
        del model, runner
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return results


def table_lines(work: str, results: dict) -> list[str]:
    """``SPEEDUPS[work]`` entries, one per model, as Python source."""
    lines = []
    for name, r in results.items():
        options = {k: v for k, v in r.items() if k in ("blocks", "graph", "compile", "compile+graph")}
        body = ", ".join(f'"{k}": Payback(speedup={v["speedup"]:.2f}, setup_s={v["setup_s"]:.1f})'
                         for k, v in options.items())
        lines.append(f'SPEEDUPS["{work}"]["{name}"] = {{{body}}}')
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--work", required=True, choices=["train", "sample"])
    p.add_argument("--models", nargs="+", default=["DiG-S/2"])
    p.add_argument("--res", type=int, default=256)
    p.add_argument("--batch", type=int, default=None, help="train: 256 (default); sample: 64 (default)")
    p.add_argument("--steps", type=int, default=None, help="train: optimizer steps (150); sample: DDIM steps (50)")
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--latents", type=int, default=4096, help="train: how many synthetic latents")
    p.add_argument("--num-samples", type=int, default=128, help="sample: images per run")
    p.add_argument("--cfg-scale", type=float, default=1.5)
    p.add_argument("--compile-scope", default="model", help="sample: scope of compile+graph (gladiff sample's default)")
    p.add_argument("--smoke", action="store_true", help="a tiny model on the CPU (tests the script)")
    args = p.parse_args(argv)
    train = args.work == "train"
    args.batch = args.batch or (256 if train else 64)
    args.steps = args.steps or (150 if train else 50)
    if args.smoke:
        if train:
            p.error("--smoke runs the sample work only (compiling a training step on a CPU takes minutes)")
        args.res, args.batch, args.num_samples, args.steps = 64, 8, 12, 3
    env = environment()
    if not args.smoke and env.get("card") is None:
        print("compile_payback: no CUDA GPU on this machine; nothing measured (--smoke runs a CPU check).")
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = measure_train(args, out) if train else measure_sample(args)
    lines = table_lines(args.work, results)
    print("\n".join(["", "# gladiff/models/payback.py:", *lines]))
    card = (env.get("card") or "cpu").replace(" ", "_").replace("/", "_")
    path = write_json(out / f"compile_payback_{args.work}_{card}.json",
                      dict(environment=env, work=args.work, res=args.res, batch=args.batch, steps=args.steps,
                           cfg_scale=args.cfg_scale if not train else None, results=results, table=lines))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
