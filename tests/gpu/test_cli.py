"""`gladiff train` then `gladiff sample` on CUDA, in fresh processes through the command line, with
every execution option at its default (precision auto = bf16, GLA backend auto = our Triton kernels,
compile auto, which stays eager for a run this short; sampling execution auto)."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gladiff.sample import read_npz
from gladiff.train import checkpoint as ckpt
from tests.processes import run_to_end

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[2]


def gladiff(*args, what):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = run_to_end([sys.executable, "-m", "gladiff", *args], env=env, cwd=ROOT, what=what)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def test_train_then_sample_on_cuda(tmp_path):
    run = tmp_path / "run"
    gladiff("train", "--run-dir", str(run), "--data", "digits", "--image-size", "16", "--model", "DiG-S/2",
            "--model-opt", "depth=4", "--model-opt", "hidden_size=128", "--model-opt", "num_heads=2",
            "--steps", "20", "--global-batch-size", "32", "--log-every", "5", "--no-tensorboard",
            "--device", "cuda", what="gladiff train")
    state = ckpt.read_checkpoint(ckpt.checkpoint_path(run, 20))
    assert state["config"]["precision"] == "auto" and state["config"]["compile"] == "auto"
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(np.isfinite(r["loss"]) for r in rows)

    out = tmp_path / "samples.npz"
    gladiff("sample", str(run), "--out", str(out), "--out", str(tmp_path / "grid.png"), "--per-class", "2",
            "--classes", "0,3,7", "--steps", "10", "--cfg-scale", "2.0", "--device", "cuda", "--no-progress",
            what="gladiff sample")
    images, labels = read_npz(out)
    assert images.shape == (6, 16, 16, 1) and images.dtype == np.uint8 and labels.tolist() == [0, 3, 7] * 2
    assert images.std() > 0 and (tmp_path / "grid.png").stat().st_size > 0
