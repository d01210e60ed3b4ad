"""The training loop on stand-ins: it trains, resumes bit-exactly, refuses mismatched models, stops on NaN."""
from __future__ import annotations

import json

import pytest
import torch
import yaml

from gladiff.train import NonFiniteLossError, TrainConfig, train
from gladiff.train import checkpoint as ckpt
from gladiff.train.data_order import epoch_permutation
from gladiff.train.loop import rank_seed, seed_everything
from tests.train.standins import NaNAfter, TinyDigits, TinyEps, tiny_builder, state_equal


def _cfg(tmp_path, name="run", **kw):
    base = dict(run_dir=str(tmp_path / name), steps=8, global_batch_size=8, lr=1e-2, ema_decay=0.9,
                log_every=2, ckpt_every=4, keep_ckpts=0, device="cpu", tensorboard=False, seed=3)
    return TrainConfig(**{**base, **kw})


def _run(cfg, objective=None, dataset=None):
    return train(cfg, dataset=dataset or TinyDigits(40), objective=objective or TinyEps(),
                 model_builder=tiny_builder, progress=False)


def test_loop_matches_a_hand_written_reference(tmp_path):
    """Six steps of the loop == six steps written out by hand from the documented recipe
    (seed -> init, per-rank seed -> noise, epoch permutations -> batches, AdamW, EMA lerp)."""
    cfg = _cfg(tmp_path, steps=6, grad_clip=0.0)
    ds = TinyDigits(20)  # 20 examples, batch 8: the third batch crosses the epoch boundary
    res = _run(cfg, dataset=ds)
    state = ckpt.read_checkpoint(res.checkpoint)

    seed_everything(cfg.seed)
    spec = state["model_spec"]
    model = tiny_builder(spec)
    ema = {k: v.clone() for k, v in model.state_dict().items()}
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.0)
    seed_everything(rank_seed(cfg.seed, 0))
    order = torch.cat([epoch_permutation(20, cfg.seed, e) for e in range(3)])
    obj = TinyEps()
    for s in range(6):
        idx = order[s * 8:(s + 1) * 8]
        x = torch.stack([ds[i][0] for i in idx])
        y = torch.tensor([ds[i][1] for i in idx])
        loss = obj.training_loss(model, x, y)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            for k, v in model.state_dict().items():
                ema[k] = v.clone() if k == "calls" else 0.9 * ema[k] + 0.1 * v
    assert state["step"] == 6
    assert state_equal(state["model"], model.state_dict())
    for k, v in state["ema"].items():
        torch.testing.assert_close(v, ema[k], rtol=1e-6, atol=1e-7)
    # The data position after 6 batches of 8 over 20 examples: 48 = 2 epochs + 8.
    assert state["data"] == {"epoch": 2, "index": 8}


def test_training_lowers_the_loss_and_records_the_run(tmp_path):
    cfg = _cfg(tmp_path, steps=60, log_every=10, ckpt_every=0, lr=2e-2)
    res = _run(cfg)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == list(range(10, 61, 10))
    assert lines[-1]["loss"] < 0.7 * lines[0]["loss"]
    assert all(m["img_per_s"] > 0 and m["grad_norm"] > 0 for m in lines)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["steps"] == 60 and saved["lr"] == 2e-2
    assert res.step == 60 and res.checkpoint.name == "step-00000060.pt"  # written at the end


@pytest.mark.parametrize("compile", ["none", "model"])
def test_exact_resume_is_bitwise(tmp_path, compile, compile_backend):
    """8 steps straight == 4 steps, a new process state, then 4 more from the checkpoint; also with
    the network compiled (TinyNet has no blocks: the "model" scope)."""
    straight = _run(_cfg(tmp_path, "a", steps=8, compile=compile))
    _run(_cfg(tmp_path, "b", steps=4, compile=compile))
    torch.manual_seed(12345)  # whatever the RNG did in between must not matter
    resumed = _run(_cfg(tmp_path, "b", steps=8, resume=True, compile=compile))
    assert (compile_backend.graphs > 0) == (compile != "none")  # the compiled path did run
    a, b = ckpt.read_checkpoint(straight.checkpoint), ckpt.read_checkpoint(resumed.checkpoint)
    assert b["step"] == 8
    assert state_equal(a["model"], b["model"])
    assert state_equal(a["ema"], b["ema"])
    assert a["data"] == b["data"]
    exp_avg = lambda s: [v["exp_avg"] for v in s["optimizer"]["state"].values()]  # noqa: E731
    assert all(torch.equal(x, y) for x, y in zip(exp_avg(a), exp_avg(b)))


def test_resume_without_checkpoints_starts_fresh_and_fresh_run_refuses_old_folder(tmp_path):
    res = _run(_cfg(tmp_path, steps=2, resume=True))
    assert res.step == 2
    with pytest.raises(ValueError, match="already holds checkpoints"):
        _run(_cfg(tmp_path, steps=4))


def test_resume_into_a_different_model_is_a_clear_error(tmp_path):
    _run(_cfg(tmp_path, steps=2))
    with pytest.raises(ValueError, match="different model.*width"):
        _run(_cfg(tmp_path, steps=4, resume=True, model_opts={"width": 16}))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    cfg = _cfg(tmp_path, steps=20, ckpt_every=2)
    with pytest.raises(NonFiniteLossError, match=r"non-finite at step 5 \(here: nan\).*step-00000004\.pt"):
        _run(cfg, objective=NaNAfter(5))
    files = ckpt.list_checkpoints(cfg.run_dir)
    assert [p.name for p in files] == ["step-00000004.pt", "step-00000002.pt"]
    state = ckpt.read_checkpoint(files[0])
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_metrics_hold_each_step_once_after_a_resume_replays_steps(tmp_path):
    """Steps logged after the last checkpoint are trained again on resume: the earlier rows go."""
    cfg = _cfg(tmp_path, steps=7, log_every=1, ckpt_every=4)  # checkpoints at 4 and 7
    _run(cfg)
    ckpt.checkpoint_path(cfg.run_dir, 7).unlink()  # as if killed after logging step 7, before saving it
    metrics = tmp_path / "run" / "metrics.jsonl"
    with open(metrics, "a") as f:
        f.write('{"step": 8, "loss": 0.')  # and mid-way through a row
    _run(_cfg(tmp_path, steps=8, log_every=1, ckpt_every=4, resume=True))  # resumes at 4
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 9))


def test_keep_ckpts_prunes_old_files(tmp_path):
    cfg = _cfg(tmp_path, steps=8, ckpt_every=2, keep_ckpts=2)
    _run(cfg)
    assert [p.name for p in ckpt.list_checkpoints(cfg.run_dir)] == ["step-00000008.pt", "step-00000006.pt"]


def test_periodic_ema_grids_leave_the_training_streams_untouched(tmp_path):
    from PIL import Image

    with_grids = _run(_cfg(tmp_path, "g", steps=4, sample_every=2, sample_steps=2))
    without = _run(_cfg(tmp_path, "n", steps=4))
    grids = sorted(p.name for p in (tmp_path / "g" / "samples").iterdir())
    assert grids == ["step-00000002.png", "step-00000004.png"]
    # 4 samples of each of the 10 classes, one class per column, 8x8 digits enlarged 8x
    assert Image.open(tmp_path / "g" / "samples" / grids[0]).size == ((10 * 10 + 2) * 8, (4 * 10 + 2) * 8)
    a, b = ckpt.read_checkpoint(with_grids.checkpoint), ckpt.read_checkpoint(without.checkpoint)
    assert state_equal(a["model"], b["model"]) and state_equal(a["ema"], b["ema"])
