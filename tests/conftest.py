"""Fixtures shared by the whole suite."""
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
