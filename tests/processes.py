"""Launching other processes from tests: one generous time limit, and a hang ends with every worker.

The limit only tells a hang from a slow machine: the two-process tests took up to 104 s on a shared
2-core machine against limits of 180-300 s, too close for a loaded CI machine. Ten minutes holds
with several times that load, and is still far below CI's budget when something does hang.
"""
from __future__ import annotations

import os
import signal
import subprocess

import pytest

LAUNCH_TIMEOUT_S = 600


def run_to_end(cmd: list[str], *, env: dict, cwd, what: str,
               timeout: float = LAUNCH_TIMEOUT_S) -> subprocess.CompletedProcess:
    """Run ``cmd`` (e.g. ``torchrun``) in its own session and return its result; past ``timeout`` kill
    the whole process group (the launcher *and* its workers) and fail the test naming ``what``."""
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate()
        pytest.fail(f"{what} did not finish in {timeout:.0f} s:\n{err[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)
