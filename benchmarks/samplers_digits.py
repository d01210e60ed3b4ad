"""Sample quality against sampler steps on the built-in digits: the samplers of both objectives at
10, 20, 50 and 250 steps, scored by the digit check. Runs on a 2-core CPU in about ten minutes.

It trains the demo recipe (``gladiff.cli.demo.DEMO_TRAIN``: 4 blocks of width 128, 2 heads, patch 4,
AdamW 1e-3, batch 64, EMA 0.995) twice: with flow matching for the demo's 1,500 steps, and with DDPM
(learned sigma) for 3,000 (DDPM learns the digits more slowly here: 27% of its samples read as the
requested class after 1,500 steps, 87% after 3,000), with ``--model`` (default DiT-S/4, the demo's DiG-S/4 with softmax attention: the
same shape, trained about 3x faster on a CPU, and the samplers know nothing about the network; the
DiG is ``--model DiG-S/4``). It then samples ``--per-class`` images of every class from the EMA
weights with every sampler of ``--samplers``, at every step count, with guidance ``--cfg-scale`` (the
demo's 2) and one noise seed for all, and scores each batch with ``DigitScorer`` (accuracy of an
independent classifier, Fréchet distance in its feature space). Heun is left out by default: it
costs what midpoint costs and is not new.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/samplers_digits.py

Writes ``--out`` (default benchmarks/results/samplers_digits_cpu.json) after every row; prints the
table docs/diffusion.md shows.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from gladiff.bench.common import environment, write_json  # noqa: E402
from gladiff.cli.demo import DEMO_SAMPLE, DEMO_TRAIN  # noqa: E402

SAMPLERS = {"flow": ["euler", "midpoint", "dpm++2m"],
            "ddpm": ["ddpm", "ddim", "dpm++2m", "dpm++2m-sde", "unipc"]}
STEPS = [10, 20, 50, 250]


def train_config(objective: str, run_root: Path, steps: int, model: str = "DiT-S/4", seed: int = 0):
    """The demo recipe with ``model``, ``objective`` and ``steps`` (everything else as ``make demo``)."""
    from gladiff.train import resolve_config

    overrides = {**DEMO_TRAIN, "model": model, "objective": objective, "steps": steps, "seed": seed, "device": "cpu",
                 "run_dir": str(Path(run_root) / objective), "resume": False, "ckpt_every": steps}
    return resolve_config(overrides=overrides)


def format_table(rows: list[dict], steps: list[int]) -> str:
    """Markdown: one row per (objective, sampler), one column per step count, 'accuracy / FD'."""
    lines = ["| objective | sampler | " + " | ".join(f"{n} steps" for n in steps) + " |",
             "|---|---|" + "---|" * len(steps)]
    seen = []
    for r in rows:
        if (r["objective"], r["sampler"]) not in seen:
            seen.append((r["objective"], r["sampler"]))
    for objective, sampler in seen:
        cells = []
        for n in steps:
            r = next((r for r in rows if (r["objective"], r["sampler"], r["steps"]) == (objective, sampler, n)), None)
            cells.append("" if r is None else f"{100 * r['accuracy']:.0f}% / {r['fd']:.1f}")
        lines.append(f"| {objective} | {sampler} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="DiT-S/4", help="zoo model trained with the demo recipe (default DiT-S/4)")
    p.add_argument("--flow-steps", type=int, default=DEMO_TRAIN["steps"],
                   help=f"training steps of the flow model (default the demo's {DEMO_TRAIN['steps']})")
    p.add_argument("--ddpm-steps", type=int, default=3000, help="training steps of the DDPM model (default 3000)")
    p.add_argument("--samplers", nargs="+", default=None,
                   help="samplers to run (default: " + "; ".join(f"{k}: {' '.join(v)}" for k, v in SAMPLERS.items())
                        + "); each objective runs those it has")
    p.add_argument("--per-class", type=int, default=10, help="samples per class and setting (default 10)")
    p.add_argument("--cfg-scale", type=float, default=DEMO_SAMPLE["cfg_scale"])
    p.add_argument("--steps", type=int, nargs="+", default=STEPS)
    p.add_argument("--objectives", nargs="+", default=list(SAMPLERS), choices=list(SAMPLERS))
    p.add_argument("--run-root", default="runs/samplers_digits")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/samplers_digits_cpu.json"))
    args = p.parse_args(argv)

    from digits_dig_vs_dit import git_commit, machine  # the same machine description

    from gladiff.eval.digits import DigitScorer
    from gladiff.sample import class_labels, load_trained, sample_images
    from gladiff.train import train
    from gladiff.train.parallel import Dist

    t_start = time.perf_counter()
    scorer = DigitScorer(image_size=DEMO_TRAIN["image_size"])
    payload = {
        "what": "digit check against sampler steps, demo model trained briefly with each objective",
        "environment": {**environment(), "machine": machine(), "gladiff_commit": git_commit(),
                        "command": "OMP_WAIT_POLICY=" + (os.environ.get("OMP_WAIT_POLICY") or "")
                                   + " python benchmarks/samplers_digits.py " + " ".join(sys.argv[1:])},
        "train_recipe": {**{k: v for k, v in DEMO_TRAIN.items() if k not in ("objective", "steps")},
                         "model": args.model},
        "train_steps": {"flow": args.flow_steps, "ddpm": args.ddpm_steps},
        "sampling": {"per_class": args.per_class, "cfg_scale": args.cfg_scale, "seed": 0,
                     "batch_size": DEMO_SAMPLE["batch_size"], "weights": "EMA"},
        "trainings": {}, "rows": [],
    }
    labels = class_labels(args.per_class * 10, 10, classes=range(10))
    for objective in args.objectives:
        steps = args.flow_steps if objective == "flow" else args.ddpm_steps
        cfg = train_config(objective, Path(args.run_root), steps, args.model)
        shutil.rmtree(cfg.run_dir, ignore_errors=True)
        print(f"== training {args.model} (demo recipe) with {objective} for {steps} steps", flush=True)
        t0 = time.perf_counter()
        result = train(cfg, progress=False)
        payload["trainings"][objective] = {"seconds": round(time.perf_counter() - t0, 1), "step": result.step}
        trained = load_trained(result.checkpoint)
        from gladiff.diffusion import OBJECTIVES

        chosen = SAMPLERS[objective] if args.samplers is None else \
            [x for x in args.samplers if x in OBJECTIVES[objective].samplers]
        for sampler in chosen:
            for n in args.steps:
                t1 = time.perf_counter()
                images, _ = sample_images(trained, labels, seed=0, batch_size=DEMO_SAMPLE["batch_size"],
                                          sampler=sampler, steps=n, cfg_scale=args.cfg_scale, dist=Dist(),
                                          progress=False)
                seconds = time.perf_counter() - t1
                score = scorer.score(images[..., 0], labels.numpy())
                row = {"objective": objective, "sampler": sampler, "steps": n,
                       "network_passes": trained.objective.network_passes(sampler, n),
                       "sample_seconds": round(seconds, 2), "accuracy": score["accuracy"], "fd": score["fd"],
                       "fd_real_halves": score["fd_real_halves"], "n": score["n"]}
                payload["rows"].append(row)
                payload["total_wall_seconds"] = round(time.perf_counter() - t_start, 1)
                write_json(args.out, payload)
                print(f"   {objective} {sampler:12s} {n:4d} steps ({row['network_passes']} passes, {seconds:5.1f} s): "
                      f"accuracy {100 * row['accuracy']:5.1f}%, fd {row['fd']:6.2f}", flush=True)
    print(format_table(payload["rows"], args.steps))
    print(f"real vs real at this size (fd_real_halves): {payload['rows'][-1]['fd_real_halves']:.2f}")
    print(f"wrote {args.out} (total {payload['total_wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
