import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """These tests run tiny models: one intra-op thread is fastest, and it keeps them fast when
    other jobs share the cores (spinning OpenMP threads then cost 10x)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
