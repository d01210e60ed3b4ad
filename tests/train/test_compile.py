"""``compile``: the training network under ``torch.compile`` (AOT autograd with eager kernels on the
CPU) gives the eager run's losses and weights, and checkpoints do not depend on it: a run resumes
across a change of ``compile`` in either direction with the same state-dict keys."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from gladiff.train import TrainConfig, train
from gladiff.train import checkpoint as ckpt
from gladiff.train.parallel import Dist, wrap_model
from tests.train.standins import TinyDigits, TinyNet, max_abs_diff

# A real DiG, small: 2 blocks (two SREM scan orientations), the real DDPM objective, label dropout on:
# every source of randomness of a run happens, some of it inside the compiled "model" graph.
DIG = dict(model="DiG-S/2", model_opts={"depth": 2, "hidden_size": 32, "num_heads": 1}, image_size=8,
           objective="ddpm")


def _cfg(tmp_path, name, **kw):
    base = dict(run_dir=str(tmp_path / name), steps=4, global_batch_size=8, lr=1e-2, ema_decay=0.9,
                log_every=1, ckpt_every=2, keep_ckpts=0, device="cpu", tensorboard=False, seed=3, **DIG)
    return TrainConfig(**{**base, **kw})


def _run(cfg):
    torch._dynamo.reset()  # every run compiles afresh, so the graphs counted are its own
    return train(cfg, dataset=TinyDigits(40), progress=False)


def _losses(cfg) -> list[float]:
    lines = (Path(cfg.run_dir) / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["loss"] for line in lines]


def _state(cfg, step: int) -> dict:
    return ckpt.read_checkpoint(ckpt.checkpoint_path(cfg.run_dir, step))


def _assert_same_weights(a: dict, b: dict) -> None:
    for which in ("model", "ema"):
        assert list(a[which]) == list(b[which])  # the same keys, in the same order: no `_orig_mod.`
        assert max_abs_diff(a[which], b[which]) <= 1e-6, which


def test_compiled_runs_equal_the_eager_run_and_resume_across_compile(tmp_path, compile_backend):
    eager = _cfg(tmp_path, "eager")
    _run(eager)
    reference = _losses(eager)

    # compile=blocks for steps 1-2, then resumed without compile for steps 3-4
    blocks = _cfg(tmp_path, "blocks", steps=2, compile="blocks")
    _run(blocks)
    assert compile_backend.graphs == 2  # one graph per distinct block: the two scan orientations
    _run(_cfg(tmp_path, "blocks", resume=True))
    assert compile_backend.graphs == 2  # the resumed half ran eagerly

    # the eager checkpoint of step 2 resumed with compile=model for steps 3-4
    model = _cfg(tmp_path, "model", compile="model", resume=True)
    (tmp_path / "model" / "checkpoints").mkdir(parents=True)
    shutil.copy2(ckpt.checkpoint_path(eager.run_dir, 2), ckpt.checkpoint_path(model.run_dir, 2))
    _run(model)
    assert compile_backend.graphs == 3  # one more: the whole network, label dropout included

    # The compiled passes run the same kernels (AOT autograd, eager backend): the same losses
    # (measured: bit-identical) and, after 4 AdamW steps, the same weights and EMA.
    assert _losses(blocks) == pytest.approx(reference, rel=1e-6, abs=0)
    assert _losses(model) == pytest.approx(reference[2:], rel=1e-6, abs=0)
    for run in (blocks, model):
        _assert_same_weights(_state(run, 4), _state(eager, 4))
    assert not any("_orig_mod" in k for k in _state(model, 4)["model"])
    assert _state(model, 4)["config"]["compile"] == "model"


def test_compile_value_is_checked():
    with pytest.raises(ValueError, match=r"compile must be one of \('auto', 'none', 'model', 'blocks'\), got 'yes'"):
        TrainConfig(compile="yes").validate()
    with pytest.raises(ValueError, match="compile must be one of"):
        wrap_model(TinyNet(), Dist(), "fast")
    with pytest.raises(ValueError, match="resolved by gladiff.train.autocompile"):
        wrap_model(TinyNet(), Dist(), "auto")
    with pytest.raises(ValueError, match="blocks"):  # compile=blocks needs a model with blocks
        wrap_model(TinyNet(), Dist(), "blocks")
