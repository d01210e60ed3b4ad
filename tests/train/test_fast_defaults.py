"""Fast by default: ``--compile auto`` (eager on a CPU; elsewhere the blocks compiled mid-run when the
rest of the run pays it back), and a loop that reads the GPU only on the steps that check, log or
write, so the CPU runs ahead of it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gladiff.cli import main
from gladiff.models.payback import Payback
from gladiff.train import TrainConfig, train
from gladiff.train import autocompile as autocompile_mod
from gladiff.train import checkpoint as ckpt
from gladiff.train import loop as loop_mod
from gladiff.train.autocompile import AutoCompile, resolve_compile
from gladiff.train.build import build_model
from gladiff.train.checks import CHECK_EVERY, StepChecks
from gladiff.train.data_order import MAX_AUTO_WORKERS, resolve_num_workers
from gladiff.train.parallel import Dist
from gladiff.train.precision import Precision
from tests.fake_clock import FakeClock
from tests.train.standins import TinyDigits, TinyEps, max_abs_diff, tiny_builder

DIG = dict(model="DiG-S/2", model_opts={"depth": 2, "hidden_size": 32, "num_heads": 1}, image_size=8,
           objective="flow")


def _cfg(tmp_path, name, **kw):
    base = dict(run_dir=str(tmp_path / name), steps=12, global_batch_size=8, lr=1e-2, ema_decay=0.9,
                log_every=4, ckpt_every=0, keep_ckpts=0, device="cpu", tensorboard=False, seed=3)
    return TrainConfig(**{**base, **kw})


def _losses(cfg) -> list[float]:
    return [json.loads(line)["loss"] for line in (Path(cfg.run_dir) / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- --compile auto
def test_defaults_are_auto_and_auto_is_none_off_cuda():
    cfg = TrainConfig()
    assert cfg.compile == "auto" and cfg.num_workers == "auto"
    assert resolve_compile("auto", torch.device("cpu")) == "none"
    assert resolve_compile("auto", torch.device("cuda", 0)) == "auto"
    assert resolve_compile("blocks", torch.device("cpu")) == "blocks"  # an explicit choice is kept


@pytest.mark.parametrize("total,expected", [(100, "blocks"), (20, "eager")])
def test_auto_compile_times_eager_steps_then_compiles_only_when_it_pays(total, expected, compile_backend):
    # 1 s per eager step, blocks 2x faster after 10 s of compiling: pays from 20 remaining steps on.
    model = build_model({"name": "DiG-S/2", "input_size": 8, "in_channels": 1, "num_classes": 10,
                         "learn_sigma": False, "overrides": DIG["model_opts"]})
    lines, clock = [], FakeClock(1.0 * autocompile_mod.TIMED_STEPS)  # one reading per end of the window
    auto = AutoCompile(model, Dist(), {"blocks": Payback(2.0, 10.0)}, start_step=0, total_steps=total,
                       message=lines.append, clock=clock)
    decide_at = autocompile_mod.WARMUP_STEPS + autocompile_mod.TIMED_STEPS
    for step in range(1, decide_at):
        auto.after_step(step)
        assert auto.choice is None and all(b._compiled_call_impl is None for b in model.blocks)
    auto.after_step(decide_at)  # steps left: total - 8; eager (total - 8) s vs 10 + (total - 8) / 2 s
    assert auto.choice == expected and len(lines) == 1 and lines[0].endswith(f": {expected}")
    assert "1000.0 ms per eager step" in lines[0] and f"{total - decide_at} steps left" in lines[0]
    compiled = [b._compiled_call_impl is not None for b in model.blocks]
    assert compiled == [expected == "blocks"] * len(model.blocks)
    auto.after_step(decide_at + 1)
    assert len(lines) == 1  # decided once


def test_auto_compile_is_inert_without_constants_blocks_or_steps():
    clock = FakeClock(1.0)
    for auto in (AutoCompile(tiny_builder({"in_channels": 1, "num_classes": 10, "learn_sigma": False,
                                           "overrides": {}}), Dist(), {"blocks": Payback(9.0, 0.0)}, 0, 100,
                             clock=clock),  # TinyNet has no blocks
                 AutoCompile(torch.nn.Module(), Dist(), {}, 0, 100, clock=clock),
                 AutoCompile(torch.nn.Module(), Dist(), {"blocks": Payback(9.0, 0.0)}, 0, 5, clock=clock)):
        for step in range(1, 20):
            auto.after_step(step)
        assert auto.choice == "eager"
    assert clock.now == 0.0  # never timed, never synchronised


def test_auto_on_a_cpu_trains_eagerly_even_where_compiling_would_pay(tmp_path, compile_backend, monkeypatch):
    monkeypatch.setattr(loop_mod, "options_for", lambda work, name: {"blocks": Payback(1000.0, 0.0)})
    cfg = _cfg(tmp_path, "auto", **DIG)
    train(cfg, dataset=TinyDigits(40), progress=False)
    assert compile_backend.graphs == 0
    assert _losses(cfg) == _losses(_run_eager(tmp_path))


def _run_eager(tmp_path):
    cfg = _cfg(tmp_path, "eager", compile="none", **DIG)
    if not (Path(cfg.run_dir) / "metrics.jsonl").exists():
        train(cfg, dataset=TinyDigits(40), progress=False)
    return cfg


def test_auto_on_a_gpu_compiles_the_blocks_mid_run_and_keeps_the_run(tmp_path, compile_backend, monkeypatch):
    """The loop's wiring, with the device check pretended away: steps 1-8 eager (3 warm-up, 5 timed),
    then the blocks compiled in place; the run equals an eager run (AOT autograd, eager kernels)."""
    monkeypatch.setattr(loop_mod, "resolve_compile", lambda compile, device: compile)
    monkeypatch.setattr(loop_mod, "options_for", lambda work, name: {"blocks": Payback(1000.0, 0.0)})
    built = []
    cfg = _cfg(tmp_path, "auto", **DIG)
    train(cfg, dataset=TinyDigits(40), progress=False, model_builder=lambda spec: built.append(
        build_model(spec)) or built[-1])
    assert compile_backend.graphs == 2  # one graph per distinct block: the two scan orientations
    assert all(b._compiled_call_impl is not None for b in built[0].blocks)
    assert built[0].validate_inputs is False  # labels are checked on the host batch instead
    eager = _run_eager(tmp_path)
    assert _losses(cfg) == pytest.approx(_losses(eager), rel=1e-6, abs=0)
    a = ckpt.read_checkpoint(ckpt.checkpoint_path(cfg.run_dir, 12))
    b = ckpt.read_checkpoint(ckpt.checkpoint_path(eager.run_dir, 12))
    assert list(a["model"]) == list(b["model"]) and max_abs_diff(a["model"], b["model"]) <= 1e-6
    assert a["config"]["compile"] == "auto"


def test_train_cli_compile_flag_errors_in_one_line(tmp_path, capsys):
    assert main(["train", "--compile", "fast", "--run-dir", str(tmp_path / "r"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "compile must be one of ('auto', 'none', 'model', 'blocks')" in err
    assert main(["train", "--num-workers", "many", "--run-dir", str(tmp_path / "r"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "num_workers must be auto or an integer" in err


# ----------------------------------------------------------------------------- no host read per step
class HostReads(torch.Tensor):
    """A tensor that counts the reads of its value on the host (each one a GPU sync on a GPU)."""

    reads = 0
    READS = {"item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__"}

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in cls.READS:
            HostReads.reads += 1
        return super().__torch_function__(func, types, args, kwargs or {})


class CountedLoss(TinyEps):
    def training_loss(self, model, x0, y):
        return {"loss": super().training_loss(model, x0, y)["loss"].as_subclass(HostReads)}


def test_the_loop_reads_the_loss_only_when_it_checks_or_logs(tmp_path):
    HostReads.reads = 0
    cfg = _cfg(tmp_path, "reads", steps=3 * CHECK_EVERY, log_every=3 * CHECK_EVERY, ckpt_every=0)
    train(cfg, dataset=TinyDigits(40), objective=CountedLoss(), model_builder=tiny_builder, progress=False)
    # checks at steps 10, 20, 30 read the losses once each; the one log line at step 30 reads their mean
    assert HostReads.reads == 4


def test_step_checks_find_the_first_nan_late_but_before_anything_is_written():
    class Stop:
        requested = False

    stop = Stop()
    checks = StepChecks(Dist(), stop, every=5)
    for step in range(1, 5):
        checks.record(step, torch.tensor(1.0) if step != 3 else torch.tensor(float("inf")))
        assert checks.poll(step) == (None, False)  # not due: nothing read yet
    checks.record(5, torch.tensor(float("nan")))
    assert checks.poll(5) == ((3, float("inf")), False)  # the first bad one, with its value
    checks.record(6, torch.tensor(2.0))
    assert checks.poll(6, force=True) == (None, False)  # read before a write: all finite since
    checks.record(7, torch.tensor(float("nan")))
    stop.requested = True  # a single process reacts at the next step, and checks the losses first
    bad, stopping = checks.poll(7)
    assert bad[0] == 7 and stopping
    with pytest.raises(ValueError, match="every"):
        StepChecks(Dist(), stop, every=0)


# ----------------------------------------------------------------------------- smaller pieces
def test_num_workers_auto_loads_in_workers_only_for_disk_data_on_a_gpu():
    class Disk:
        reads_from_disk = True

    class Memory:
        reads_from_disk = False

    assert resolve_num_workers("auto", Disk(), "cpu") == 0  # the CPU's cores are the trainer's
    assert resolve_num_workers("auto", Memory(), "cuda") == 0  # the digits: nothing to wait for
    assert resolve_num_workers("auto", Disk(), "cuda", cpu_count=16) == MAX_AUTO_WORKERS
    assert resolve_num_workers("auto", Disk(), "cuda", local_processes=8, cpu_count=16) == 1
    assert resolve_num_workers("auto", Disk(), "cuda", local_processes=4, cpu_count=16) == 3
    assert resolve_num_workers(2, Memory(), "cpu") == 2
    from gladiff.data import DigitsDataset, LatentDataset
    from gladiff.data.imagefolder import ImageFolderDataset

    assert LatentDataset.reads_from_disk and ImageFolderDataset.reads_from_disk
    assert not DigitsDataset.reads_from_disk


def test_labels_checked_on_the_host_and_fused_adamw_on_cuda():
    loop_mod.check_labels(torch.tensor([0, 9, 3]), 10)
    with pytest.raises(ValueError, match=r"labels in \[0, 10\], outside the 10 classes"):
        loop_mod.check_labels(torch.tensor([0, 10]), 10)
    cfg = TrainConfig(lr=3e-4, weight_decay=0.1, betas=(0.9, 0.95))
    assert loop_mod.adamw_options(cfg, torch.device("cpu")) == dict(lr=3e-4, weight_decay=0.1, betas=(0.9, 0.95))
    assert loop_mod.adamw_options(cfg, torch.device("cuda", 0))["fused"] is True
    assert "fused" not in loop_mod.adamw_options(TrainConfig(parallel="fsdp"), torch.device("cuda", 0))


def test_grad_norm_measured_only_when_asked_unless_clipping():
    model = torch.nn.Linear(2, 1, bias=False)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    prec = Precision("fp32", torch.device("cpu"))
    w = model.weight.detach().clone()
    model.weight.grad = torch.tensor([[3.0, 4.0]])
    assert prec.step(opt, model.parameters(), measure_norm=False) is None
    torch.testing.assert_close(model.weight.detach(), w - torch.tensor([[3.0, 4.0]]))  # stepped, unclipped
    model.weight.grad = torch.tensor([[3.0, 4.0]])
    w = model.weight.detach().clone()
    assert float(prec.step(opt, model.parameters(), max_norm=1.0, measure_norm=False)) == pytest.approx(5.0)
    torch.testing.assert_close(model.weight.detach(), w - torch.tensor([[0.6, 0.8]]))  # still clipped
