"""The GPU suite (``make test-gpu``): compiled Triton kernels, torch.compile with Inductor, CUDA
graphs, the CLI on CUDA. Every test here is marked ``gpu`` and skips without CUDA.

With ``GLADIFF_GPU_TEST_REPORT=PATH`` the run writes a JSON summary there: the card, the library
versions (``gladiff.bench.common.environment``), the pass / fail / skip counts and every test's
outcome and duration, for ``benchmarks/results/``.
"""
from __future__ import annotations

import os
from collections import Counter

import pytest
import torch

REPORT_ENV = "GLADIFF_GPU_TEST_REPORT"
_outcomes: dict[str, dict] = {}


@pytest.fixture(autouse=True)
def _compiled_triton_and_exact_float32():
    """Triton compiles for the GPU (not the CPU interpreter the CPU suite sets up), and float32 stays
    float32 (no TF32) so that float32 results can be held to float32 tolerances."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.fail("TRITON_INTERPRET=1 is set, so Triton would interpret the kernels instead of compiling "
                    "them: run the GPU tests on their own (make test-gpu, or pytest -m gpu tests)", pytrace=False)
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def pytest_runtest_logreport(report):
    # A test's outcome: its first failed or skipped phase, else its call.
    entry = _outcomes.setdefault(report.nodeid, {"outcome": "passed", "seconds": 0.0})
    entry["seconds"] = round(entry["seconds"] + report.duration, 2)
    if report.outcome != "passed" and entry["outcome"] == "passed":
        entry["outcome"] = "error" if report.failed and report.when != "call" else report.outcome
        if report.skipped and isinstance(report.longrepr, tuple):
            entry["reason"] = report.longrepr[2]


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get(REPORT_ENV)
    if not path or not _outcomes:
        return
    from gladiff.bench.common import environment, write_json

    counts = Counter(e["outcome"] for e in _outcomes.values())
    written = write_json(path, dict(
        environment(), command=" ".join(["python -m pytest", *session.config.invocation_params.args]),
        suite="tests/gpu", exitstatus=int(exitstatus), total=len(_outcomes),
        passed=counts["passed"], failed=counts["failed"], errors=counts["error"], skipped=counts["skipped"],
        seconds=round(sum(e["seconds"] for e in _outcomes.values()), 1),
        tests={name: _outcomes[name] for name in sorted(_outcomes)}))
    print(f"\nGPU test summary: {dict(counts)} -> {written}")
