"""Loading a script of ``benchmarks/`` (not a package) as a module, for the tests of its pure parts."""
import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def load_script(filename: str, module_name: str):
    """``benchmarks/<filename>`` executed as module ``module_name`` (its top level runs once per call)."""
    spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / filename)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def bench_script():
    """:func:`load_script`, for tests."""
    return load_script
