"""The loop's components on their own: data order, config precedence, EMA, precision, signals."""
from __future__ import annotations

import os
import signal

import pytest
import torch
import yaml

from gladiff.train.config import TrainConfig, parse_key_values, resolve_config, save_config
from gladiff.train.data_order import BatchStream, DataPosition, epoch_permutation
from gladiff.train.ema import EMA
from gladiff.train.precision import Precision
from gladiff.train.signals import StopSignals


def _take(stream, n):
    it = iter(stream)
    return [next(it) for _ in range(n)]


def test_batches_walk_the_epoch_permutations_end_to_end():
    n, bs = 10, 4
    flat = [i for b in _take(BatchStream(n, bs, seed=7), 5) for i in b]
    expect = torch.cat([epoch_permutation(n, 7, e) for e in range(2)]).tolist()
    assert flat == expect  # 20 = two full epochs, batches crossing the boundary included
    assert sorted(expect[:10]) == list(range(10)) and expect[:10] != expect[10:]


def test_ranks_split_each_global_batch_and_together_equal_one_process():
    one = _take(BatchStream(13, 6, seed=1), 4)
    r0 = _take(BatchStream(13, 6, seed=1, rank=0, world_size=2), 4)
    r1 = _take(BatchStream(13, 6, seed=1, rank=1, world_size=2), 4)
    assert [a + b for a, b in zip(r0, r1)] == one
    with pytest.raises(ValueError, match="not divisible"):
        BatchStream(13, 6, world_size=4)
    with pytest.raises(ValueError, match="empty"):
        BatchStream(0, 6)


def test_resuming_at_an_advanced_position_continues_the_same_order():
    s = BatchStream(11, 4, seed=3)
    straight = _take(s, 7)
    pos = s.advance(DataPosition(), 3)
    assert pos == DataPosition(epoch=1, index=1)  # 12 examples used of 11 per epoch
    resumed = _take(BatchStream(11, 4, seed=3, position=pos), 4)
    assert resumed == straight[3:]
    assert DataPosition.from_state(pos.state_dict()) == pos


def test_config_precedence_defaults_yaml_flags(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text(yaml.safe_dump({"steps": 50, "lr": 3e-4, "model_opts": {"depth": 4, "hidden_size": 64}}))
    cfg = resolve_config(y, {"lr": 1e-3, "model_opts": {"depth": 2}})
    assert cfg.steps == 50  # from the file
    assert cfg.lr == 1e-3  # the flag wins
    assert cfg.model_opts == {"depth": 2, "hidden_size": 64}  # merged key by key
    assert cfg.global_batch_size == TrainConfig().global_batch_size  # default
    save_config(cfg, tmp_path / "out.yaml")
    assert resolve_config(tmp_path / "out.yaml") == cfg  # the recorded config reproduces the run


def test_config_errors_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="unknown training config key 'stpes'; did you mean 'steps'"):
        resolve_config(overrides={"stpes": 3})
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_config(overrides={"precision": "fp8"})
    with pytest.raises(ValueError, match="global_batch_size must be > 0"):
        resolve_config(overrides={"global_batch_size": 0})
    with pytest.raises(FileNotFoundError):
        resolve_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        resolve_config(tmp_path / "list.yaml")
    parsed = parse_key_values(["depth=4", "gla_backend=chunk", "p=0.1"])
    assert parsed == {"depth": 4, "gla_backend": "chunk", "p": 0.1}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_key_values(["depth"])


def test_ema_follows_the_closed_form():
    """After k updates towards fixed weights w from e0: e_k = w + decay**k (e0 - w)."""
    model = torch.nn.Linear(3, 2)
    ema = EMA(model, decay=0.9)
    e0 = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    for _ in range(5):
        ema.update(model)
    for e, p, start in zip(ema.model.parameters(), model.parameters(), e0):
        torch.testing.assert_close(e, p + 0.9**5 * (start - p))
    assert not any(p.requires_grad for p in ema.model.parameters())
    with pytest.raises(ValueError, match="decay"):
        EMA(model, decay=1.5)


def test_fp16_loss_scaling_skips_overflowing_steps():
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    prec = Precision("fp16", torch.device("cpu"))
    before = model.weight.detach().clone()
    prec.backward(model(torch.ones(1, 4)).sum())
    scale = prec.scaler.get_scale()
    model.weight.grad.fill_(float("inf"))  # an overflow
    prec.step(opt, model.parameters())
    assert torch.equal(model.weight, before) and prec.scaler.get_scale() < scale
    # a normal step moves the weights by -lr * grad, unscaled
    prec.backward(model(torch.ones(1, 4)).sum())
    norm = prec.step(opt, model.parameters(), max_norm=0.0)
    torch.testing.assert_close(model.weight, before - 0.1 * torch.ones(1, 4))
    torch.testing.assert_close(norm, torch.tensor(5.0 ** 0.5))  # |[1,1,1,1,1]| incl. bias


def test_grad_clipping_caps_the_global_norm():
    model = torch.nn.Linear(2, 1, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    prec = Precision("fp32", torch.device("cpu"))
    w = model.weight.detach().clone()
    model.weight.grad = torch.tensor([[3.0, 4.0]])
    norm = prec.step(opt, model.parameters(), max_norm=1.0)
    assert float(norm) == pytest.approx(5.0)
    torch.testing.assert_close(model.weight, w - torch.tensor([[0.6, 0.8]]))
    assert Precision("auto", torch.device("cpu")).name == "fp32"


def test_stop_signals_turn_sigterm_into_a_request():
    with StopSignals() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.name == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored
