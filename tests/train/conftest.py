import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models: one intra-op thread (see tests/conftest.py)."""
