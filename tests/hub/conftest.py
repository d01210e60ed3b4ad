import pytest

from gladiff.cli import main

TINY = ["--model", "DiG-S/4", "--model-opt", "depth=2", "--model-opt", "hidden_size=32",
        "--model-opt", "num_heads=1"]


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models: one intra-op thread (see tests/conftest.py)."""


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """No test here may reach the Hub: a download that is not mocked fails the test."""
    import huggingface_hub

    def refuse(*args, **kwargs):
        raise AssertionError(f"a test tried to download from the Hub: {args} {kwargs}")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A 4-step digits run of a tiny DiG (flow), with a digit-check file like the demo's."""
    run = tmp_path_factory.mktemp("hub") / "run"
    assert main(["train", "--run-dir", str(run), "--data", "digits", "--image-size", "16", *TINY,
                 "--objective", "flow", "--steps", "4", "--global-batch-size", "8", "--lr", "1e-2",
                 "--ema-decay", "0.5", "--device", "cpu", "--no-tensorboard", "--log-every", "2"]) == 0
    (run / "score.json").write_text('{"accuracy": 0.125, "fd": 321.5, "n": 40}\n')
    return run
