import pytest

import gladiff.sample.load as load
from gladiff.train import TrainConfig, train
from tests.train.standins import TinyDigits, TinyEps, tiny_builder


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Tiny models: one intra-op thread (see tests/conftest.py)."""


@pytest.fixture
def trained_ckpt(tmp_path, monkeypatch):
    """A checkpoint of the stand-in net, and ``load`` pointed at the stand-in builders."""
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), steps=3, global_batch_size=8, device="cpu",
                      tensorboard=False, log_every=1)
    res = train(cfg, dataset=TinyDigits(16), objective=TinyEps(), model_builder=tiny_builder, progress=False)
    monkeypatch.setattr(load, "build_model", tiny_builder)
    monkeypatch.setattr(load, "build_objective", lambda name, opts: TinyEps())
    return res.checkpoint
