"""DiG vs DiT on the built-in digits at equal size and budget: the digit check side by side.

For each seed and each of DiG and DiT this trains the demo recipe (``gladiff.cli.demo.DEMO_TRAIN``,
the values of configs/demo.yaml: 4 blocks, width 128, 2 heads, patch 4, flow matching, 1,500 AdamW
steps of batch 64, lr 1e-3, EMA 0.995) with ``gladiff.train``; the DiT is ``DiT-S/4`` with the same
``create_model`` overrides as the demo's ``DiG-S/4``, so only the token mixer / MLP differ. It then
samples 100 per class with the demo sampler (EMA weights, Euler, 20 steps, guidance 2, sampling seed
= the run's seed, the same for both models) and scores them with ``DigitScorer``.

    OMP_WAIT_POLICY=PASSIVE python benchmarks/digits_dig_vs_dit.py --seeds 0 1

Writes ``--out`` (default benchmarks/results/digits_dig_vs_dit.json) after every run, so an
interrupted comparison keeps what it finished; the run folders go to ``--run-root``. Runs are
sequential on purpose: timings of two trainings sharing a CPU would measure each other.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from gladiff.bench.common import environment, write_json  # noqa: E402
from gladiff.cli.demo import DEMO_SAMPLE, DEMO_TRAIN  # noqa: E402

# The two contenders: the demo's DiG and the DiT with the same depth / width / heads / patch.
MODELS = {"DiG": "DiG-S/4", "DiT": "DiT-S/4"}


def machine() -> dict:
    """CPU model, core count and torch's thread count (this benchmark is meant for CPUs)."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "platform": platform.platform()}


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def mean_img_per_s(run_dir: Path) -> float | None:
    """Mean of the ``img_per_s`` the training loop logged to ``metrics.jsonl`` (None if it logged none)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    rates = [json.loads(line).get("img_per_s") for line in path.read_text().splitlines() if line.strip()]
    rates = [r for r in rates if r is not None]
    return float(np.mean(rates)) if rates else None


def train_config(kind: str, seed: int, run_root: Path, steps: int, device: str):
    """The resolved ``TrainConfig`` of one run: the demo recipe with ``kind``'s model, ``seed`` and ``steps``."""
    from gladiff.train import resolve_config

    overrides = {**DEMO_TRAIN, "model": MODELS[kind], "seed": seed, "steps": steps,
                 "run_dir": str(Path(run_root) / f"{kind.lower()}-seed{seed}"), "device": device, "resume": False}
    return resolve_config(overrides=overrides)


def run_one(kind: str, seed: int, run_root: Path, steps: int, per_class: int, device: str, scorer) -> dict:
    """Train, sample and score one model from scratch.

    Returns a dict: model name, overrides, params, steps, train seconds, img/s (steps * batch /
    train seconds, and the logged mean), sampling seconds, and the digit check (accuracy, fd,
    fd_real_halves, n).
    """
    from gladiff.sample import class_labels, load_trained, sample_images, write_outputs
    from gladiff.train import train
    from gladiff.train.parallel import Dist, pick_device

    cfg = train_config(kind, seed, run_root, steps, device)
    run_dir = Path(cfg.run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)  # always from scratch: the time must be a whole training

    # The 1-minute load average before and after training: on a shared CPU, other jobs inflate the
    # timings (not the scores: training is deterministic on a given CPU).
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    result = train(cfg)
    t_train = time.perf_counter() - t0
    load_after = os.getloadavg()[0]
    if result.stopped_by:
        raise SystemExit(f"{kind} seed {seed}: training stopped by {result.stopped_by}")

    dev = pick_device(device)
    trained = load_trained(result.checkpoint, device=dev)
    params = sum(p.numel() for p in trained.model.parameters())
    s = DEMO_SAMPLE
    labels = class_labels(per_class * 10, 10, classes=range(10))
    t1 = time.perf_counter()
    images, labels = sample_images(trained, labels, seed=seed, batch_size=s["batch_size"],
                                   sampler=s["sampler"], steps=s["steps"], cfg_scale=s["cfg_scale"],
                                   dist=Dist(device=dev))
    t_sample = time.perf_counter() - t1
    write_outputs([run_dir / "samples.npz"], images, labels)
    write_outputs([run_dir / "grid.png"], images, labels, grid_count=100, nrow=10)
    score = scorer.score(images[..., 0], labels)

    return {
        "model": MODELS[kind], "model_opts": dict(DEMO_TRAIN["model_opts"]), "seed": seed,
        "params": int(params), "steps": int(result.step), "global_batch_size": DEMO_TRAIN["global_batch_size"],
        "train_seconds": round(t_train, 1),
        "img_per_s": round(result.step * DEMO_TRAIN["global_batch_size"] / t_train, 1),
        "img_per_s_logged_mean": None if (r := mean_img_per_s(run_dir)) is None else round(r, 1),
        "sample_seconds": round(t_sample, 1),
        "load_avg_1min_before_after_training": [round(load_before, 2), round(load_after, 2)],
        "accuracy": score["accuracy"], "fd": score["fd"], "fd_real_halves": score["fd_real_halves"],
        "n_samples": score["n"], "run_dir": str(run_dir),
    }


def summarize(runs: list[dict]) -> dict:
    """Per model over seeds: mean of accuracy, fd, train seconds and img/s, and the seeds counted."""
    out = {}
    for kind in MODELS:
        rs = [r for r in runs if r["kind"] == kind]
        if rs:
            out[kind] = {"seeds": [r["seed"] for r in rs], "params": rs[0]["params"],
                         **{k: float(np.mean([r[k] for r in rs]))
                            for k in ("accuracy", "fd", "fd_real_halves", "train_seconds", "img_per_s")}}
    return out


def format_table(runs: list[dict]) -> str:
    """A Markdown table, one row per (model, seed)."""
    lines = ["| model | seed | params | steps | train s | img/s | accuracy | fd | fd real halves |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lines.append(f"| {r['kind']} ({r['model']}, {r['model_opts']['depth']}x{r['model_opts']['hidden_size']}) "
                     f"| {r['seed']} | {r['params'] / 1e6:.2f}M | {r['steps']} | {r['train_seconds']:.0f} "
                     f"| {r['img_per_s']:.0f} | {100 * r['accuracy']:.1f}% | {r['fd']:.2f} "
                     f"| {r['fd_real_halves']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--steps", type=int, default=DEMO_TRAIN["steps"], help="training steps (the demo's 1,500)")
    p.add_argument("--per-class", type=int, default=DEMO_SAMPLE["per_class"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--run-root", default="runs/digits_dig_vs_dit")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/digits_dig_vs_dit.json"))
    args = p.parse_args(argv)

    from gladiff.eval.digits import DigitScorer

    t_start = time.perf_counter()
    scorer = DigitScorer(image_size=DEMO_TRAIN["image_size"])  # trained / loaded once, outside the timings
    payload = {
        "what": "DiG vs DiT on the built-in digits, demo recipe, equal depth/width/heads/patch/steps",
        "environment": {**environment(), "machine": machine(), "gladiff_commit": git_commit(),
                        "command": "OMP_WAIT_POLICY=" + (os.environ.get("OMP_WAIT_POLICY") or "")
                                   + " python benchmarks/digits_dig_vs_dit.py " + " ".join(sys.argv[1:])},
        "train_recipe": {k: v for k, v in DEMO_TRAIN.items() if k != "model"},
        "sampling": {**DEMO_SAMPLE, "seed": "the run's seed"},
        "runs": [],
    }
    # Seed-major order: an interrupted comparison still holds complete DiG/DiT pairs.
    for seed in args.seeds:
        for kind in args.models:
            print(f"== {kind} ({MODELS[kind]}), seed {seed}", flush=True)
            r = {"kind": kind, **run_one(kind, seed, Path(args.run_root), args.steps, args.per_class,
                                         args.device, scorer)}
            payload["runs"].append(r)
            payload["summary"] = summarize(payload["runs"])
            payload["total_wall_seconds"] = round(time.perf_counter() - t_start, 1)
            write_json(args.out, payload)
            print(f"   params {r['params']:,}, train {r['train_seconds']:.0f} s ({r['img_per_s']:.0f} img/s), "
                  f"accuracy {100 * r['accuracy']:.1f}%, fd {r['fd']:.2f} (real halves {r['fd_real_halves']:.2f})",
                  flush=True)
    print(format_table(payload["runs"]))
    print(f"wrote {args.out} (total {payload['total_wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
