"""How sampling runs the network: a ragged last batch padded (no second compile, the real samples
unchanged), ``--execution auto`` (eager on a CPU; elsewhere decided from timed passes), the number of
network passes each sampler makes, and the CLI defaults."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gladiff.cli import build_parser, main
from gladiff.diffusion import create_objective
from gladiff.models import create_model
from gladiff.models.payback import Payback
from gladiff.sample import (AutoExecution, PadBatch, Trained, class_labels, read_npz, resolve_execution,
                            sample_images)
from gladiff.sample import auto as auto_mod
from tests.fake_clock import FakeClock
from tests.train.standins import TinyEps


def _tiny_dig(name="DiG-S/2"):
    torch.manual_seed(0)
    return create_model(name, input_size=8, in_channels=1, num_classes=10, learn_sigma=False, depth=2,
                        hidden_size=32, num_heads=1).eval().requires_grad_(False)


def _trained(model, name=None):
    info = {"sample_size": 8, "in_channels": 1, "num_classes": 10}
    return Trained(model=model, objective=TinyEps(), spec={"name": name} if name else {}, info=info,
                   config={}, step=0, path=Path("-"))


class Recorder(torch.nn.Module):
    """``model(x, t, y)`` that remembers the batch of every call and returns a per-row function of
    all three inputs (so a row mix-up or a dropped pad shows)."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def forward(self, x, t, y):
        self.batches.append(x.shape[0])
        return x * 2 + t[:, None, None, None] / 1000 + y[:, None, None, None].float()


def test_pad_batch_runs_small_calls_at_the_full_batch_and_returns_only_the_real_rows():
    inner = Recorder()
    padded = PadBatch(inner)
    x, t, y = torch.randn(5, 1, 4, 4), torch.rand(5) * 999, torch.arange(5)
    assert torch.equal(padded(x, t, y), inner(x, t, y))
    out = padded(x[:2], t[:2], y[:2])
    assert inner.batches == [5, 5, 5] and out.shape == (2, 1, 4, 4)
    assert torch.equal(out, inner(x[:2], t[:2], y[:2]))  # the real rows only, as an unpadded call gives
    # a real model: the rows of the padded call are the unpadded call's (rows do not interact)
    model = _tiny_dig()
    full = PadBatch(model, batch=4)
    xs, ts, ys = torch.randn(3, 1, 8, 8), torch.tensor([10.0, 500.0, 990.0]), torch.tensor([1, 2, 3])
    torch.testing.assert_close(full(xs, ts, ys), model(xs, ts, ys), rtol=1e-5, atol=1e-6)
    assert full.in_channels == 1  # the wrapped model's attributes show through


@pytest.mark.parametrize("scope", ["model", "blocks"])
def test_ragged_last_batch_neither_recompiles_nor_changes_the_samples(scope, compile_backend):
    tr = _trained(_tiny_dig())
    eager7, _ = sample_images(tr, class_labels(7, 10, seed=1), seed=5, batch_size=3, progress=False)
    before = compile_backend.graphs
    even, _ = sample_images(tr, class_labels(6, 10, seed=1), seed=5, batch_size=3, progress=False,
                            execution="compile", compile_scope=scope)
    graphs_even = compile_backend.graphs - before
    torch._dynamo.reset()
    before = compile_backend.graphs
    ragged, labels = sample_images(tr, class_labels(7, 10, seed=1), seed=5, batch_size=3, progress=False,
                                   execution="compile", compile_scope=scope)
    # 3 + 3 + 1 samples: the last batch of 1 ran padded to 3, so no graph was compiled for it
    assert compile_backend.graphs - before == graphs_even > 0
    assert ragged.shape == (7, 8, 8, 1) and labels.tolist() == class_labels(7, 10, seed=1).tolist()
    # The same noise as an unpadded eager run (seeds per batch untouched): the same images, also for
    # the padded sample; a padded row reaching the output would shift or replace them.
    assert np.abs(ragged.astype(int) - eager7.astype(int)).max() <= 1
    assert np.array_equal(ragged[:6], even)


def test_auto_is_eager_on_a_cpu(compile_backend):
    assert resolve_execution("auto", "cpu") == "eager"
    assert resolve_execution("auto", "cuda") == "auto"
    assert resolve_execution("graph", "cpu") == "graph"  # an explicit choice is kept (and refused later)
    with pytest.raises(ValueError, match="unknown execution"):
        resolve_execution("fast", "cpu")
    tr = _trained(_tiny_dig(), name="DiG-S/2")  # a model with measured constants: still eager on a CPU
    labels = class_labels(4, 10, classes=range(4))
    eager, _ = sample_images(tr, labels, seed=2, batch_size=4, progress=False)
    auto, _ = sample_images(tr, labels, seed=2, batch_size=4, progress=False, execution="auto")
    assert np.array_equal(auto, eager) and compile_backend.graphs == 0


@pytest.mark.parametrize("planned,expected", [(20, "eager"), (2000, "compile")])
def test_auto_execution_switches_when_the_remaining_passes_pay_the_setup(planned, expected, compile_backend):
    # 0.1 s per eager pass, "compile" 2x faster for 5 s: pays from 100 remaining passes on.
    model, lines = _tiny_dig(), []
    runner = AutoExecution(model, "cpu", planned, {"compile": Payback(2.0, 5.0)}, report=lines.append,
                           clock=FakeClock(0.1))
    x, t, y = torch.randn(4, 1, 8, 8), torch.full((4,), 500.0), torch.arange(4)
    first = runner(x, t, y)
    for _ in range(auto_mod.WARMUP_PASSES + auto_mod.TIMED_PASSES):
        assert runner.choice is None or runner.calls == auto_mod.WARMUP_PASSES + auto_mod.TIMED_PASSES
        runner(x, t, y)
    assert runner.choice == expected and len(lines) == 1 and lines[0].endswith(f": {expected}")
    assert "100.0 ms per eager step" in lines[0]
    out = runner(x[:3], t[:3], y[:3])  # a ragged batch after the switch
    torch.testing.assert_close(out, model(x[:3], t[:3], y[:3]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(runner(x, t, y), first, rtol=1e-5, atol=1e-6)
    assert (compile_backend.graphs > 0) == (expected == "compile")
    if expected == "compile":
        assert runner._run.batch == 4  # padded to the largest batch seen before the switch


def test_auto_execution_without_constants_or_with_few_passes_never_times():
    clock = FakeClock(0.1)
    for runner in (AutoExecution(Recorder(), "cpu", 10**6, {}, clock=clock),
                   AutoExecution(Recorder(), "cpu", 3, {"compile": Payback(100.0, 0.0)}, clock=clock)):
        for _ in range(10):
            runner(torch.zeros(2, 1, 2, 2), torch.zeros(2), torch.zeros(2, dtype=torch.int64))
        assert runner.choice == "eager" and clock.now == 0.0


@pytest.mark.parametrize("objective,sampler,steps,expected", [
    ("ddpm", "ddim", "ddim5", 5), ("ddpm", "ddpm", 7, 7), ("ddpm", "ddim", None, None),
    ("flow", "euler", 4, 4), ("flow", "heun", 3, 6)])
def test_network_passes_count_the_model_calls_of_one_batch(objective, sampler, steps, expected):
    obj = create_objective(objective, **({"num_timesteps": 20, "learn_sigma": False} if objective == "ddpm" else {}))
    calls = []

    def model(x, t, y):
        calls.append(1)
        return torch.zeros_like(x)

    obj.sample(model, (2, 1, 4, 4), torch.tensor([1, 2]), sampler=sampler, steps=steps, cfg_scale=1.5,
               null_label=10, seed=0)
    assert obj.network_passes(sampler, steps) == len(calls)  # one guided call per step counts once
    if expected is not None:
        assert len(calls) == expected
    assert create_objective("flow").network_passes("dopri5", 10) is None  # adaptive: not known ahead


def test_sample_cli_defaults_opt_outs_and_one_line_errors(trained_ckpt, tmp_path, capsys):
    args = build_parser().parse_args(["sample", "run", "--out", "a.npz"])
    assert args.execution == "auto" and args.precision == "auto"
    args = build_parser().parse_args(["sample", "run", "--out", "a.npz", "--execution", "eager",
                                      "--precision", "fp32"])
    assert args.execution == "eager" and args.precision == "fp32"  # the opt-outs
    # on a CPU the defaults are the opt-outs: fp32, eager
    common = [str(trained_ckpt), "--num-samples", "5", "--batch-size", "2", "--device", "cpu", "--no-progress"]
    assert main(["sample", *common, "--out", str(tmp_path / "default.npz")]) == 0
    assert main(["sample", *common, "--out", str(tmp_path / "explicit.npz"), "--precision", "fp32",
                 "--execution", "eager"]) == 0
    a, b = read_npz(tmp_path / "default.npz"), read_npz(tmp_path / "explicit.npz")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    capsys.readouterr()
    out = str(tmp_path / "s.npz")
    assert main(["sample", str(trained_ckpt), "--out", out, "--device", "cpu", "--execution", "graph",
                 "--num-samples", "2", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs a CUDA device" in err
