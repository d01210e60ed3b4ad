"""The run-folder lock: a second trainer (or a sampler writing into the folder) is refused with the
holder named; a lock whose process died never blocks."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from gladiff.cli import main
from gladiff.train import TrainConfig, run_lock, train
from gladiff.train.run_lock import LOCK_FILE, RunLock, RunLockError
from tests.train.standins import TinyDigits, TinyEps, tiny_builder

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--model", "DiG-S/4", "--model-opt", "depth=2", "--model-opt", "hidden_size=32",
        "--model-opt", "num_heads=1", "--objective", "flow", "--global-batch-size", "4", "--device", "cpu",
        "--no-tensorboard"]
# Holds the lock of the folder argv[1] until its stdin closes (or it is killed).
HOLDER = ("import sys; from gladiff.train.run_lock import RunLock; lock = RunLock(sys.argv[1]); "
          "lock.acquire(); print('held', flush=True); sys.stdin.read()")


def _train(run_dir: Path, steps: int = 1):
    cfg = TrainConfig(run_dir=str(run_dir), steps=steps, global_batch_size=4, log_every=1, device="cpu",
                      tensorboard=False)
    return train(cfg, dataset=TinyDigits(8), objective=TinyEps(), model_builder=tiny_builder, progress=False)


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    return int(proc.stdout)


def _write_holder(run: Path, pid: int) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": pid,
                                             "started": "2026-12-01 10:00:00", "command": "gladiff train"}))


def test_a_second_holder_is_refused_with_the_holder_named(tmp_path):
    run = tmp_path / "run"
    with RunLock(run):
        with pytest.raises(RunLockError, match=rf"in use by pid {os.getpid()} on {socket.gethostname()}, "
                                               r"started .*, command: .*pytest"):
            RunLock(run).acquire()
        with pytest.raises(RunLockError, match="in use by"):  # the trainer asks before building anything
            _train(run)
        assert not (run / "checkpoints").exists()
    assert _train(run).step == 1  # released: the next one runs


@pytest.mark.parametrize("flock", [True, False], ids=["flock", "no-fcntl"])
def test_a_lock_left_by_a_dead_process_does_not_block(tmp_path, monkeypatch, flock):
    if not flock:  # the platforms without fcntl: the holder's liveness decides
        monkeypatch.setattr(run_lock, "fcntl", None)
    run = tmp_path / "run"
    _write_holder(run, _dead_pid())
    lock = RunLock(run)
    lock.acquire()
    assert json.loads((run / LOCK_FILE).read_text())["pid"] == os.getpid()  # now names this process
    lock.release()
    if not flock:  # a live holder still blocks there, with a way out named
        _write_holder(run, os.getpid())
        with pytest.raises(RunLockError, match=rf"pid {os.getpid()}.*if that process has ended, delete "):
            RunLock(run).acquire()


def test_a_trainer_or_sampler_on_a_held_folder_is_refused_until_the_holder_is_killed(tmp_path, capsys):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert holder.stdout.readline() == "held\n"
        assert main(["train", "--run-dir", str(run), "--steps", "1", *TINY]) == 2
        err = capsys.readouterr().err
        assert f"run folder {run} is in use by pid {holder.pid}" in err and "command: -c" in err
        assert main(["sample", str(run), "--out", str(run / "s.npz"), "--device", "cpu"]) == 2
        assert f"in use by pid {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()  # SIGKILL: no clean-up runs in the holder
        holder.wait()
    assert main(["train", "--run-dir", str(run), "--steps", "1", *TINY]) == 0



def test_under_torchrun_only_rank_0_takes_the_lock_and_every_rank_follows_it(tmp_path, monkeypatch):
    """Rank 1 of 2, with rank 0's side of the broadcast played here; tests/train/test_processes.py
    runs 2 real ranks on one folder (rank 1 is not refused by rank 0's lock)."""
    from gladiff.train.parallel import Dist

    run = tmp_path / "run"
    said = []
    monkeypatch.setattr(run_lock.parallel, "broadcast_object", lambda dist, obj: said.append(obj) or said[0])
    said.append(None)  # rank 0 took the lock
    with RunLock(run, Dist(rank=1, world_size=2)):
        assert not (run / LOCK_FILE).exists()  # rank 1 did not touch it
    said[:] = ["run folder X is in use by pid 1"]  # rank 0 was refused: rank 1 stops too, not waiting
    with pytest.raises(RunLockError, match="in use by pid 1"):
        with RunLock(run, Dist(rank=1, world_size=2)):
            pass
