"""Timing whole ``gladiff train`` commands: synthetic latents, the run, its steady rate and warm-up.

``gladiff bench`` times one step in a tight loop; a user runs a command. These helpers run the command
itself (a subprocess, as typed) on pre-extracted latents made up on the spot (no download, no VAE),
and split its wall time into the steady rate once warm and the time the warm-up cost on top:

    warmup_s = loop_s - steps * batch / steady_img_s

where ``loop_s`` is the training loop's own clock at its last log line (``metrics.jsonl``'s
``elapsed_s``, from the first step on) and ``steady_img_s`` the median rate of the log windows in
the second half of the run. ``startup_s = wall_s - loop_s`` is the rest: imports, building the model,
the data, the final checkpoint. Two runs of the same model, eager and compiled, give the constants of
``gladiff.models.payback`` (``payback_constants``). Used by ``benchmarks/train_vs_bench.py`` and
``benchmarks/compile_payback.py``.
"""
from __future__ import annotations

import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def write_synthetic_latents(folder: str | Path, num: int, res: int, num_classes: int = 1000,
                            seed: int = 0) -> Path:
    """A latents folder (``gladiff extract-latents``'s format) of ``num`` random SD-VAE-shaped
    latents ``[4, res/8, res/8]`` stored as float16 posterior mean and std, random labels. Returns it."""
    from gladiff.data.latents import save_latents

    if res % 8:
        raise ValueError(f"res must be a multiple of 8 (latent = res / 8), got {res}")
    rng = np.random.default_rng(seed)
    shape = (num, 4, res // 8, res // 8)
    mean = rng.standard_normal(shape, dtype=np.float32) * 5.0  # raw SD latents: std ~5 before the 0.18215 scale
    std = np.full(shape, 0.05, dtype=np.float32)
    labels = rng.integers(0, num_classes, num)
    save_latents(folder, mean, labels, std=std, classes=[str(c) for c in range(num_classes)], image_size=res,
                 vae="stabilityai/sd-vae-ft-ema", dtype="float16")
    return Path(folder)


def train_command(latents: str | Path, run_dir: str | Path, *, model: str, res: int, batch: int, steps: int,
                  compile: str = "auto", num_workers: str = "auto", log_every: int = 10, device: str = "auto",
                  model_opts: tuple[str, ...] = ()) -> list[str]:
    """The ``python -m gladiff train`` command line of a timed run (no TensorBoard, no sample grids,
    one checkpoint at the end)."""
    cmd = [sys.executable, "-m", "gladiff", "train", "--data", f"latents:{latents}", "--image-size", str(res),
           "--model", model, "--global-batch-size", str(batch), "--steps", str(steps),
           "--log-every", str(log_every), "--ckpt-every", "0", "--sample-every", "0", "--no-tensorboard",
           "--compile", compile, "--num-workers", str(num_workers), "--run-dir", str(run_dir),
           "--device", device]
    for opt in model_opts:
        cmd += ["--model-opt", opt]
    return cmd


def run_command(cmd: list[str], log: str | Path | None = None) -> dict:
    """Run ``cmd`` with this gladiff first on the import path (a ``python -m gladiff`` command runs the
    code being measured, wherever it is started); ``{"wall_s", "returncode", "output"}`` (stdout and
    stderr together, also written to ``log``). Raises ``RuntimeError`` with the output's tail when the
    command fails."""
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])}
    start = time.perf_counter()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    wall = time.perf_counter() - start
    if log is not None:
        Path(log).write_text(proc.stdout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
    return {"wall_s": wall, "returncode": proc.returncode, "output": proc.stdout}


def read_windows(run_dir: str | Path) -> list[dict]:
    """The log lines of a run (``metrics.jsonl``): step, loss, img_per_s, elapsed_s, ..."""
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if line]


def steady_summary(windows: list[dict], batch: int, wall_s: float | None = None) -> dict:
    """From the log windows of a run of ``batch`` images per step: ``steady_img_s`` (median of the
    windows ending in the second half of the run), ``steps``, ``loop_s``, ``warmup_s`` (what the loop
    took beyond ``steps`` steps at the steady rate) and, given the command's ``wall_s``, ``startup_s``."""
    if not windows:
        raise ValueError("the run logged nothing: give it more steps than --log-every")
    last = windows[-1]
    steps, loop_s = int(last["step"]), float(last["elapsed_s"])
    late = [w["img_per_s"] for w in windows if w["step"] > steps / 2] or [last["img_per_s"]]
    steady = statistics.median(late)
    out = {"steady_img_s": steady, "steps": steps, "loop_s": loop_s,
           "warmup_s": loop_s - steps * batch / steady, "windows": len(windows)}
    if wall_s is not None:
        out.update(wall_s=wall_s, startup_s=wall_s - loop_s)
    return out


def payback_constants(eager: dict, fast: dict) -> dict:
    """``gladiff.models.payback.Payback``'s numbers from two ``steady_summary`` of the same model, run
    eagerly and under the faster execution: ``speedup`` = ratio of steady rates, ``setup_s`` = the
    extra warm-up (the compile) of the faster run."""
    return {"speedup": fast["steady_img_s"] / eager["steady_img_s"],
            "setup_s": max(0.0, fast["warmup_s"] - eager["warmup_s"])}


_AUTO_LINE = re.compile(r"--compile auto: .*: (\w+)\s*$", re.M)


def compile_choice(output: str) -> str | None:
    """What ``--compile auto`` chose in a run's output (``"eager"``/``"blocks"``), or None if it did
    not decide (a CPU, a model without constants, a run too short)."""
    found = _AUTO_LINE.findall(output)
    return found[-1] if found else None
