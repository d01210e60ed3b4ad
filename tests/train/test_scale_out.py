"""Scale-out: FSDP2 over two gloo processes == one process; sharded checkpoints reshard between 2 and 1
processes and between FSDP and DDP; sampling loads them; activation checkpointing changes no gradient.

One reference run (one process, a real tiny DiG, the deterministic ``NoNoise`` loss, no label dropout)
is compared with chains of runs that switch the number of processes and the parallelism at its
checkpoints. Without randomness in the loss, every chain must reproduce the reference's weights up to
the order of float32 sums.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gladiff.sample import load_trained
from gladiff.train import TrainConfig, train
from gladiff.train import checkpoint as ckpt
from gladiff.train import sharded_checkpoint, sharding
from gladiff.train.build import build_model
from gladiff.train.loop import SampleGrids, seed_everything
from gladiff.train.parallel import Dist
from gladiff.train.precision import Precision
from tests.processes import run_to_end
from tests.train.standins import NoNoise, TinyDigits, TinyEps, max_abs_diff, state_equal

ROOT = Path(__file__).resolve().parents[2]
JOBS = str(Path(__file__).with_name("run_scale_jobs.py"))
DIG = {"model": "DiG-S/2", "model_opts": {"depth": 2, "hidden_size": 32, "num_heads": 1,
                                          "class_dropout_prob": 0.0}, "image_size": 8}
COMMON = dict(global_batch_size=8, lr=1e-2, log_every=1, device="cpu", tensorboard=False, seed=5,
              grad_clip=0.5, ema_decay=0.5, keep_ckpts=0, **DIG)
# Only the order of float32 sums differs between one and two processes. Adam divides by the root of
# tiny second moments in the first steps and so magnifies those roundings from step to step (measured
# 6e-8 after 2 steps, 6e-7 after 4, 3.8e-6 after 6). A chain of runs must stay within 2x of what a
# straight 2-process DDP run differs by at the same step (and within 2e-6 where that is smaller); a
# lost optimizer state or a step counter off by one moves weights by ~1e-3.
FLOOR = 2e-6


def _cfg(run_dir, **kw) -> dict:
    return {**COMMON, "run_dir": str(run_dir), **kw}


def _train_here(cfg: dict):
    return train(TrainConfig(**cfg), dataset=TinyDigits(64), objective=NoNoise(), model_builder=build_model,
                 progress=False)


def _launch(tmp: Path, name: str, jobs: list) -> None:
    """Run ``jobs`` (see run_scale_jobs.py) in 2 gloo processes under torchrun."""
    spec = tmp / f"{name}.json"
    spec.write_text(json.dumps(jobs))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = run_to_end([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                       JOBS, str(spec)], env=env, cwd=ROOT, what=name)
    assert done.returncode == 0, done.stderr[-4000:]


def _copy_run(src: Path, dst: Path, keep_steps=None) -> Path:
    """A new run folder holding ``src``'s checkpoints (only ``keep_steps`` if given)."""
    (dst / "checkpoints").mkdir(parents=True)
    for p in ckpt.list_checkpoints(src):
        if keep_steps is None or int(p.name[5:13]) in keep_steps:
            (shutil.copytree if p.is_dir() else shutil.copy2)(p, dst / "checkpoints" / p.name)
            if p.is_file():  # with its checksum
                shutil.copy2(ckpt.sidecar(p), dst / "checkpoints" / ckpt.sidecar(p).name)
    return dst


def _weights(path: Path, which: str = "model") -> dict:
    return ckpt.model_weights(ckpt.read_checkpoint(path), which)


def _losses(run_dir: Path, key: str = "loss") -> list[float]:
    return [json.loads(line)[key] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every run once; returns their folders. The reference ``ref``: 6 steps, one process, a ``.pt``
    checkpoint every 2 steps; ``ddp``: the same in 2 DDP processes (the float32 rounding floor).
    The chains, each compared with ``ref`` at its last step:

    - ``fsdp2``: FSDP + activation checkpointing, 2 processes, steps 1-2 (sharded checkpoint at 2);
    - ``one``: resumes ``fsdp2`` (2 writers) in 1 process, steps 3-4 (sharded checkpoint, 1 writer);
    - ``fsdp2b``: resumes ``one`` in 2 FSDP processes, steps 5-6;
    - ``ddp2``: resumes ``one`` in 2 DDP processes, steps 5-6 (``.pt``);
    - ``from_pt``: resumes ``ref``'s ``.pt`` of step 4 in 2 FSDP processes, steps 5-6;
    - ``bf16``/``bf16_ref``: FSDP with bf16 mixed precision vs one process with bf16 autocast, 2 steps;
    - ``fp16``: FSDP with fp16 mixed precision (dynamic loss scale), 2 steps;
    - ``grids``/``nogrids``: FSDP with a sampling objective, with and without a sample grid every step;
    - ``ddp_compiled``/``fsdp_compiled``: 2 steps in 2 processes with the network compiled (DDP around
      the compiled model; FSDP with its sharded blocks compiled), backend ``CountingBackend``.
    """
    tmp = tmp_path_factory.mktemp("scale")
    r = {name: tmp / name for name in ("ref", "ddp", "fsdp2", "one", "fsdp2b", "ddp2", "from_pt", "bf16",
                                      "bf16_ref", "fp16", "grids", "nogrids", "ddp_compiled", "fsdp_compiled")}
    _train_here(_cfg(r["ref"], steps=6, ckpt_every=2))
    _train_here(_cfg(r["bf16_ref"], steps=2, ckpt_every=0, precision="bf16"))
    _copy_run(r["ref"], r["from_pt"], keep_steps={4})
    _launch(tmp, "launch1", [
        {"train": _cfg(r["ddp"], steps=6, ckpt_every=2)},
        {"train": _cfg(r["fsdp2"], steps=2, ckpt_every=0, parallel="fsdp", activation_checkpointing=True)},
        {"train": _cfg(r["from_pt"], steps=6, ckpt_every=0, parallel="fsdp", resume=True)},
        {"train": _cfg(r["bf16"], steps=2, ckpt_every=0, parallel="fsdp", precision="bf16")},
        {"train": _cfg(r["fp16"], steps=2, ckpt_every=0, parallel="fsdp", precision="fp16")},
        {"train": _cfg(r["ddp_compiled"], steps=2, ckpt_every=0, compile="model")},
        {"train": _cfg(r["fsdp_compiled"], steps=2, ckpt_every=0, parallel="fsdp", compile="blocks")},
    ])
    _copy_run(r["fsdp2"], r["one"])
    _train_here(_cfg(r["one"], steps=4, ckpt_every=0, parallel="fsdp", resume=True))
    _copy_run(r["one"], r["fsdp2b"])
    _copy_run(r["one"], r["ddp2"])
    _launch(tmp, "launch2", [
        {"train": _cfg(r["fsdp2b"], steps=6, ckpt_every=0, parallel="fsdp", activation_checkpointing=True,
                       resume=True)},
        {"train": _cfg(r["ddp2"], steps=6, ckpt_every=0, parallel="ddp", resume=True)},
        {"load": {"checkpoint": str(r["one"]), "out": str(tmp / "loaded")}},
        {"train": _cfg(r["grids"], steps=2, ckpt_every=0, parallel="fsdp", sample_every=1), "objective": "tiny_eps"},
        {"train": _cfg(r["nogrids"], steps=2, ckpt_every=0, parallel="fsdp"), "objective": "tiny_eps"},
    ])
    r["loaded"] = tmp / "loaded"
    return r


def _at(run: Path, step: int) -> Path:
    found = [p for p in ckpt.list_checkpoints(run) if int(p.name[5:13]) == step]
    assert found, f"{run} has no checkpoint of step {step}: {ckpt.list_checkpoints(run)}"
    return found[0]


def _assert_same_run(runs: dict, name: str, step: int) -> None:
    ref, ddp, run = (_at(runs[k], step) for k in ("ref", "ddp", name))
    for which in ("model", "ema"):
        floor = max_abs_diff(_weights(ref, which), _weights(ddp, which))
        diff = max_abs_diff(_weights(ref, which), _weights(run, which))
        assert diff <= max(FLOOR, 2 * floor), (f"{name} step {step} {which}: max |diff| {diff:.2e} vs the "
                                               f"one-process run, where plain 2-process DDP differs by {floor:.2e}")


def test_ddp_two_processes_match_one_process(runs):
    for step, tol in ((2, FLOOR), (4, 1e-5), (6, 1e-5)):  # see FLOOR for the growth
        for which in ("model", "ema"):
            diff = max_abs_diff(_weights(_at(runs["ref"], step), which), _weights(_at(runs["ddp"], step), which))
            assert diff < tol, (step, which, diff)


def test_fsdp_two_processes_match_one_process(runs):
    path = _at(runs["fsdp2"], 2)
    assert path.is_dir() and path.suffix == ".dcp"
    assert len(list(path.glob("__*_0.distcp"))) == 2  # both ranks wrote their shards
    assert len(ckpt.read_checkpoint(path)["rng"]) == 2
    _assert_same_run(runs, "fsdp2", 2)
    # clipping (0.5) saw the global gradient norm, not a shard's (those norms are 2.3 and 1.2)
    one, two = _losses(runs["ref"], "grad_norm")[:2], _losses(runs["fsdp2"], "grad_norm")
    assert len(two) == 2 and min(two) > 0.5 and all(abs(a - b) < 1e-5 * a for a, b in zip(one, two))
    # the weights moved, so the comparison is not between two untouched initialisations
    seed_everything(5)
    init = build_model(ckpt.read_checkpoint(path)["model_spec"]).state_dict()
    assert max_abs_diff(_weights(path), init) > 1e-3


def test_compiled_ddp_and_fsdp_match_one_eager_process(runs):
    """compile=model under DDP, compile=blocks under FSDP: the weights of the eager runs, and the
    compiled path did run on both ranks (the model in one graph: DDP's bucket splitting has nothing
    to split at this size; one graph per distinct block: two scan orientations)."""
    for name, graphs in (("ddp_compiled", "1"), ("fsdp_compiled", "2")):
        assert [(runs[name] / f"graphs-rank{r}.txt").read_text() for r in (0, 1)] == [graphs, graphs]
        _assert_same_run(runs, name, 2)
    assert _at(runs["fsdp_compiled"], 2).suffix == ".dcp" and _at(runs["ddp_compiled"], 2).suffix == ".pt"


def test_checkpoint_of_two_processes_resumes_in_one(runs):
    assert len(ckpt.read_checkpoint(_at(runs["one"], 2))["rng"]) == 2
    assert len(ckpt.read_checkpoint(_at(runs["one"], 4))["rng"]) == 1
    _assert_same_run(runs, "one", 4)


def test_checkpoint_of_one_process_resumes_in_two(runs):
    _assert_same_run(runs, "fsdp2b", 6)


def test_sharded_checkpoint_resumes_under_ddp_and_ddp_checkpoint_under_fsdp(runs):
    assert _at(runs["ddp2"], 6).suffix == ".pt"
    _assert_same_run(runs, "ddp2", 6)
    assert _at(runs["from_pt"], 6).suffix == ".dcp"
    _assert_same_run(runs, "from_pt", 6)


def test_fsdp_mixed_precision_keeps_float32_state_and_matches_autocast(runs):
    # bf16 (gather dtype) under FSDP vs bf16 autocast in one process: the same losses to bf16 precision
    fsdp, one = _losses(runs["bf16"]), _losses(runs["bf16_ref"])
    assert len(fsdp) == len(one) == 2
    for a, b in zip(fsdp, one):
        assert abs(a - b) <= 2e-2 * abs(b), (fsdp, one)
    md = torch.distributed.checkpoint.FileSystemReader(str(_at(runs["bf16"], 2))).read_metadata()
    dtypes = {m.properties.dtype for k, m in md.state_dict_metadata.items()
              if k.startswith(("model.", "ema.")) and hasattr(m, "properties")}
    assert dtypes == {torch.float32}  # master weights and EMA stay float32
    fp16 = ckpt.read_checkpoint(_at(runs["fp16"], 2))
    assert fp16["scaler"] and fp16["scaler"]["scale"] > 0  # the loss scale is part of the checkpoint
    assert all(torch.isfinite(v).all() for v in _weights(_at(runs["fp16"], 2)).values())


def test_sampling_loads_sharded_checkpoints(runs):
    ref = _weights(_at(runs["ref"], 4), "ema")
    trained = load_trained(runs["one"])  # one process, the newest checkpoint: the sharded step 4
    assert trained.step == 4 and trained.path.suffix == ".dcp"
    assert max_abs_diff(trained.model.state_dict(), ref) < FLOOR
    assert load_trained(_at(runs["fsdp2"], 2)).step == 2  # a folder named directly; 2 writers
    for rank in (0, 1):  # under torchrun, every rank loads the whole EMA
        got = torch.load(f"{runs['loaded']}-rank{rank}.pt", weights_only=True)
        assert max_abs_diff(got, ref) < FLOOR


def test_sample_grids_under_fsdp_draw_the_gathered_ema_and_leave_training_alone(runs, tmp_path):
    path = _at(runs["grids"], 2)
    saved = ckpt.read_checkpoint(path)
    model = build_model(saved["model_spec"])
    model.load_state_dict(_weights(path, "ema"))
    # the same grid, drawn here by the same class from the EMA of the checkpoint of that step
    SampleGrids(tmp_path, TinyEps(), saved["data_info"], TrainConfig(**saved["config"]),
                Precision("fp32", torch.device("cpu")), Dist()).write(2, model.eval())
    grid = np.asarray(Image.open(runs["grids"] / "samples" / "step-00000002.png"))
    assert grid.std() > 0 and np.array_equal(grid, np.asarray(Image.open(tmp_path / "step-00000002.png")))
    other = _at(runs["nogrids"], 2)
    for which in ("model", "ema"):
        assert state_equal(_weights(path, which), _weights(other, which))


def test_newest_valid_skips_an_incomplete_sharded_checkpoint(runs, tmp_path):
    run = _copy_run(runs["one"], tmp_path / "run")  # sharded checkpoints of steps 2 and 4
    newest = _at(run, 4)
    assert ckpt.newest_valid_checkpoint(run)[0] == newest
    shard = newest / "__0_0.distcp"
    shard.write_bytes(shard.read_bytes()[:100])  # a shard cut short
    with pytest.warns(UserWarning, match=r"__0_0\.distcp has SHA-256"):  # the checksum sees it first
        path, state = ckpt.newest_valid_checkpoint(run)
    assert path == _at(run, 2) and state["step"] == 2 and "sharded" in state
    (newest / "meta.pt").unlink()
    with pytest.raises(ValueError, match="incomplete"):
        ckpt.read_checkpoint(newest)
    # a crash mid-write leaves only a temporary folder: not listed, removed by the next prune
    (tmp_path / "run" / "checkpoints" / ".step-00000006.dcp.tmp").mkdir()
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step-00000004.dcp", "step-00000002.dcp"]
    ckpt.prune(run, keep=1)
    # the incomplete step 4 is not counted, so step 2, the newest readable checkpoint, stays
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000002.dcp", "step-00000004.dcp"]


def test_sharded_meta_holds_what_a_pt_checkpoint_holds(runs):
    pt = ckpt.read_checkpoint(_at(runs["ref"], 2))
    dcp_meta = ckpt.read_checkpoint(_at(runs["fsdp2"], 2))
    assert set(pt) - {"model", "ema", "optimizer"} == set(dcp_meta) - {"sharded"}
    assert dcp_meta["format"] == sharded_checkpoint.FORMAT and dcp_meta["data"] == pt["data"]


# ----------------------------------------------------------------------------- activation checkpointing
@pytest.mark.parametrize("name", ["DiG-S/2", "DiT-S/2"])
def test_activation_checkpointing_gives_the_same_gradients(name):
    from gladiff import create_model

    def grads(checkpointed: bool):
        torch.manual_seed(0)
        model = create_model(name, input_size=8, in_channels=1, num_classes=10, depth=2, hidden_size=32,
                             num_heads=2, class_dropout_prob=0.5)
        for p in model.parameters():  # leave adaLN-Zero's zeros, so every block gets gradients
            torch.nn.init.normal_(p, std=0.05) if p.requires_grad else None
        if checkpointed:
            sharding.checkpoint_blocks(model)
            assert sharding.is_checkpointed(model)
        g = torch.Generator().manual_seed(1)
        x, t = torch.randn(4, 1, 8, 8, generator=g), torch.rand(4, generator=g) * 999
        torch.manual_seed(2)  # label dropout draws from the global RNG: the same drops in both
        model(x, t, torch.arange(4)).square().mean().backward()
        return {n.replace("_checkpoint_wrapped_module.", ""): p.grad for n, p in model.named_parameters()
                if p.grad is not None}, model

    plain, m0 = grads(False)
    ckpted, m1 = grads(True)
    assert plain.keys() == ckpted.keys() and len(plain) > 20
    assert all(plain[k].abs().max() > 0 for k in plain if ".blocks." in f".{k}")
    assert max_abs_diff(plain, ckpted) <= 1e-7
    assert m0.state_dict().keys() == m1.state_dict().keys()  # checkpoints stay interchangeable


def test_parallel_option_is_validated_and_needs_blocks(tmp_path):
    with pytest.raises(ValueError, match="parallel must be one of"):
        TrainConfig(parallel="zero3").validate()
    with pytest.raises(ValueError, match="no `blocks`"):
        sharding.prepare(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), Dist(), "ddp", activation_checkpointing=True)
