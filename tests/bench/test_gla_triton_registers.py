"""benchmarks/gla_triton_registers.py on the CPU: the forward kernel compiled for sm_90a with Triton's
ahead-of-time API and assembled by the ptxas in Triton's wheel (no GPU), for two value head sizes. The
script runs in a subprocess without ``TRITON_INTERPRET`` (the suite interprets kernels; compiling in the
same process would leave Triton's JIT out of interpreter mode for the tests after it; for the same
reason Triton is not imported here: the kernel tests set ``TRITON_INTERPRET`` before its first import)."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="needs Triton")
SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gla_triton_registers.py"


def run(*args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    return subprocess.run([sys.executable, str(SCRIPT), "--kernels", "sequential fwd", "--warps", "4", *args],
                          capture_output=True, text=True, env=env, timeout=300)


def test_value_head_size_reaches_the_compiled_kernel(tmp_path):
    reports = {}
    for dv in (32, 64):
        out = tmp_path / f"dv{dv}.json"
        proc = run("--dv", str(dv), "--out", str(out))
        assert proc.returncode == 0, proc.stderr[-2000:]
        data = json.loads(out.read_text())
        assert data["command"].endswith(f"--dv {dv} --out {out}") and data["target"] == "sm_90"
        rows = data["rows"]
        assert [r["kernel"] for r in rows] == ["sequential fwd", "sequential fwd (segments)"]
        assert all(r["dv"] == dv and "error" not in r and r["registers"] > 0 for r in rows), rows
        reports[dv] = rows[0]
    # a [32, 32] output tile instead of [32, 64]: a different kernel, so a different register report
    assert (reports[32]["registers"], reports[32]["spill_stores"]) != (reports[64]["registers"], reports[64]["spill_stores"])


@pytest.mark.parametrize("dv", ["48", "8"])
def test_value_head_size_must_be_a_power_of_two_from_16(dv):
    proc = run("--dv", dv)
    assert proc.returncode == 2 and "--dv must be a power of two >= 16" in proc.stderr
