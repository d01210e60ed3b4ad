"""tests/ops: seeded random inputs, and the Triton policy of the kernel tests (triton_check.py)."""
import zlib

import pytest
import torch


def pytest_configure(config):
    config.addinivalue_line("markers", "needs_triton(problem): the test runs our Triton kernels; "
                                       "`problem` says why they cannot run here (None: they can)")


@pytest.fixture(autouse=True)
def _seeded(request):
    """Every random input of a test is drawn after seeding the global generator from the test's id,
    so a failure reproduces with the same numbers, whichever tests ran before it."""
    torch.manual_seed(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture(autouse=True)
def _triton_available(request):
    marker = request.node.get_closest_marker("needs_triton")
    if marker is not None and marker.kwargs.get("problem"):
        from triton_check import unavailable

        unavailable(marker.kwargs["problem"])
