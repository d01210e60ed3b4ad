"""Whether our Triton kernels can be tested here (under Triton's CPU interpreter), and what a test
does when they cannot.

Without Triton every kernel test used to skip and the suite still passed, so a machine that could not
install Triton checked none of the kernels and said nothing. Now a test that needs the kernels fails
when they are unavailable, unless ``GLADIFF_TEST_WITHOUT_TRITON=1`` asks to skip them (for machines
where Triton cannot be installed; CI never sets it)."""
from __future__ import annotations

import importlib
import os

import pytest

OPT_OUT = "GLADIFF_TEST_WITHOUT_TRITON"


def import_kernels(name: str):
    """``(gladiff.ops.<name>, None)`` with its kernels decorated for the interpreter, or
    ``(module or None, why not)``. Sets ``TRITON_INTERPRET=1`` first (unless already set)."""
    os.environ.setdefault("TRITON_INTERPRET", "1")
    try:
        module = importlib.import_module(f"gladiff.ops.{name}")
    except ImportError as err:
        return None, f"Triton is not importable ({err})"
    if not module._INTERPRET:
        return module, "the Triton kernels were imported without TRITON_INTERPRET=1"
    return module, None


def unavailable(problem: str, module_level: bool = False) -> None:
    """Skip with ``problem`` when the opt-out is set, else fail (at module level: a collection error)."""
    if os.environ.get(OPT_OUT) == "1":
        pytest.skip(f"{problem} ({OPT_OUT}=1)", allow_module_level=module_level)
    pytest.fail(f"{problem}: the Triton kernel tests cannot run. Install Triton (`make test` does) or set "
                f"{OPT_OUT}=1 to skip them.", pytrace=False)
