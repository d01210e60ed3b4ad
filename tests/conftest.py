"""Fixtures shared by the whole suite; GPU tests skip without CUDA."""
from pathlib import Path

import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """Run a test with one intra-op thread. Tests of tiny models and tiny convolutions are fastest
    that way, and stay fast when other jobs share a small machine's cores (idle OpenMP workers
    spinning against them were measured to cost 10x). Folders that want it for every test request
    it from an autouse fixture of their own conftest."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def compile_backend(monkeypatch):
    """``torch.compile`` in the training loop and the sampler routed to a ``CountingBackend`` (AOT
    autograd, eager kernels: seconds on a CPU, no C++ compiler); yields it, so a test can assert
    that graphs were compiled. Dynamo's caches are cleared before and after, so a test counts only
    the graphs of its own runs."""
    from gladiff.sample import graphed
    from gladiff.train import parallel
    from tests.train.standins import CountingBackend

    backend = CountingBackend()
    monkeypatch.setattr(parallel, "COMPILE_BACKEND", backend)
    monkeypatch.setattr(graphed, "COMPILE_BACKEND", backend)
    torch._dynamo.reset()
    yield backend
    torch._dynamo.reset()


# ----------------------------------------------------------------------------- GPU tests (tests/gpu)
GPU_TESTS = Path(__file__).resolve().parent / "gpu"


def pytest_ignore_collect(collection_path, config):
    """``-m gpu`` collects tests/gpu only: the CPU kernel tests set TRITON_INTERPRET=1 when they are
    imported, which would put the GPU tests' Triton kernels under the CPU interpreter."""
    if (config.getoption("markexpr", "") == "gpu" and collection_path.suffix == ".py"
            and GPU_TESTS not in collection_path.resolve().parents):
        return True
    return None


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` skip on machines without CUDA."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (make test-gpu on a GPU machine)")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)
