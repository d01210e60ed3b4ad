"""Training in other processes: SIGTERM checkpoints and exits; two gloo processes == one process."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from gladiff.train import TrainConfig, train
from gladiff.train import checkpoint as ckpt
from gladiff.train.loop import seed_everything
from tests.train.standins import NoNoise, TinyDigits, max_abs_diff, tiny_builder

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = str(Path(__file__).with_name("run_standin.py"))


def _env():
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def test_sigterm_saves_a_checkpoint_and_exits(tmp_path):
    run = tmp_path / "run"
    cfg = dict(run_dir=str(run), steps=10**7, global_batch_size=8, log_every=1, ckpt_every=0,
               device="cpu", tensorboard=False)
    proc = subprocess.Popen([sys.executable, SCRIPT, json.dumps(cfg)], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        metrics = run / "metrics.jsonl"
        deadline = time.time() + 120
        while not (metrics.exists() and metrics.read_text().count("\n") >= 3):  # training is under way
            assert proc.poll() is None, proc.communicate()
            assert time.time() < deadline, "training did not start"
            time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert result["stopped_by"] == "SIGTERM" and 3 <= result["step"] < 10**7
    path, state = ckpt.newest_valid_checkpoint(run)
    assert state["step"] == result["step"] and path == Path(result["checkpoint"])


def test_two_gloo_processes_match_one_process(tmp_path):
    common = dict(steps=3, global_batch_size=8, lr=1e-2, log_every=1, ckpt_every=0, device="cpu",
                  tensorboard=False, seed=5, grad_clip=0.5)
    one = train(TrainConfig(run_dir=str(tmp_path / "one"), **common), dataset=TinyDigits(64),
                objective=NoNoise(), model_builder=tiny_builder, progress=False)
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", SCRIPT,
         json.dumps({"run_dir": str(tmp_path / "two"), **common}), "no_noise"],
        env=_env(), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    a = ckpt.read_checkpoint(one.checkpoint)
    b = ckpt.read_checkpoint(ckpt.checkpoint_path(tmp_path / "two", 3))
    assert len(b["rng"]) == 2  # both ranks' RNG states were gathered
    params = [k for k in a["model"] if k != "calls"]
    assert max_abs_diff({k: a["model"][k] for k in params}, {k: b["model"][k] for k in params}) < 1e-6
    assert max_abs_diff({k: a["ema"][k] for k in params}, {k: b["ema"][k] for k in params}) < 1e-6
    # and the weights did move: the comparison is not between two untouched initialisations
    seed_everything(5)
    init = tiny_builder(a["model_spec"])
    assert max_abs_diff(a["model"], {**init.state_dict(), "calls": a["model"]["calls"]}) > 1e-3
    assert a["data"] == b["data"]
