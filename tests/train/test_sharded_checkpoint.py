"""Sharded (DCP) checkpoints written by one process: reading never runs code from the folder, damage
inside a shard is detected by the checksums, and genuine checkpoints load through the safe path.

The run is a real tiny DiG trained with ``parallel="fsdp"`` in this process (no process group: one
process writes DCP shards as FSDP would), so the folders are what ``torch.distributed.checkpoint``
itself writes. The multi-process resharding is tested in ``test_scale_out.py``.
"""
from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader

from gladiff.cli import main
from gladiff.sample import load_trained
from gladiff.train import TrainConfig, sharded_checkpoint, train
from gladiff.train import checkpoint as ckpt
from gladiff.train.build import build_model
from gladiff.train.checkpoint_files import SUMS, sha256_file, write_sums
from tests.train.standins import TinyDigits, TinyEps, state_equal

DIG = {"model": "DiG-S/2", "model_opts": {"depth": 2, "hidden_size": 32, "num_heads": 1}, "image_size": 8}


def _cfg(run_dir, **kw) -> TrainConfig:
    base = dict(run_dir=str(run_dir), steps=4, global_batch_size=4, ckpt_every=2, keep_ckpts=0, log_every=1,
                device="cpu", tensorboard=False, parallel="fsdp", **DIG)
    return TrainConfig(**{**base, **kw})


def _train(cfg: TrainConfig):
    return train(cfg, dataset=TinyDigits(16), objective=TinyEps(), model_builder=build_model, progress=False)


@pytest.fixture(scope="module")
def genuine(tmp_path_factory) -> Path:
    """A run folder with the sharded checkpoints of steps 2 and 4."""
    run = tmp_path_factory.mktemp("dcp") / "run"
    _train(_cfg(run))
    return run


@pytest.fixture
def run(genuine, tmp_path) -> Path:
    return Path(shutil.copytree(genuine, tmp_path / "run"))


class Payload:
    """Unpickling this creates ``marker``: the proof that code from the file ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def _reseal(folder: Path) -> None:
    """Record the folder's current checksums, as whoever crafted it can."""
    write_sums(folder / SUMS, {f.name: sha256_file(f) for f in folder.iterdir() if f.name != SUMS})


def _stock_weights(folder: Path, which: str = "ema") -> dict:
    """``which`` loaded by DCP's own reader and planner (trusted here: the folder is genuine)."""
    md = FileSystemReader(str(folder)).read_metadata()
    out = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in md.state_dict_metadata.items()
           if k.startswith(f"{which}.") and hasattr(m, "chunks")}
    dcp.load(out, checkpoint_id=str(folder))
    return {k[len(which) + 1:]: v for k, v in out.items()}


def test_genuine_sharded_checkpoints_load_only_through_the_safe_path(run, monkeypatch):
    newest = ckpt.checkpoint_dir(run) / "step-00000004.dcp"
    assert ckpt.verify_checkpoint(newest) == {".metadata", "__0_0.distcp", "meta.pt"}  # all checksummed
    reference = _stock_weights(newest)
    stock_load_bytes = DefaultLoadPlanner.load_bytes
    loaded_values = []

    def refuse(*a, **kw):
        raise AssertionError("DCP's own unpickling reader was used")

    def spy(self, read_item, value):  # the safe planner's non-tensor values (optimizer lr, betas, ...)
        loaded_values.append(read_item.dest_index.fqn)
        return stock_load_bytes(self, read_item, value)

    monkeypatch.setattr(FileSystemReader, "read_metadata", refuse)
    monkeypatch.setattr(DefaultLoadPlanner, "load_bytes", spy)
    trained = load_trained(run)
    assert trained.step == 4 and state_equal(trained.model.state_dict(), reference)
    assert _train(_cfg(run, steps=6, resume=True)).step == 6  # model, EMA and optimizer state
    assert any(".param_groups." in fqn for fqn in loaded_values)


def test_a_crafted_metadata_pickle_is_refused_and_runs_nothing(run, tmp_path, capsys):
    newest = ckpt.checkpoint_dir(run) / "step-00000004.dcp"
    marker = tmp_path / "code-ran"
    md = sharded_checkpoint.SafeReader(newest).read_metadata()
    md.planner_data["ema.pos_embed"] = Payload(marker)  # inside an otherwise genuine metadata object
    (newest / ".metadata").write_bytes(pickle.dumps(md))
    _reseal(newest)  # checksums do not stop a crafted file: the unpickler must

    refused = rf"refusing {newest / '.metadata'}: it asks to load builtins\.exec"
    with pytest.raises(ckpt.UnsafeCheckpointError, match=refused):
        ckpt.read_checkpoint(newest)
    with pytest.raises(ckpt.UnsafeCheckpointError, match=refused):  # refused, not skipped for step 2
        ckpt.newest_valid_checkpoint(run)
    with pytest.raises(ckpt.UnsafeCheckpointError, match=refused):  # dcp.load's own metadata read
        sharded_checkpoint._load({"ema.pos_embed": torch.empty(0)}, newest)
    with pytest.raises(ckpt.UnsafeCheckpointError, match=refused):
        _train(_cfg(run, steps=6, resume=True))
    assert main(["sample", str(run), "--out", str(tmp_path / "s.npz"), "--num-samples", "1", "--device",
                 "cpu", "--no-progress"]) == 2
    assert f"refusing {newest / '.metadata'}" in capsys.readouterr().err
    (newest / SUMS).unlink()  # a folder without checksums (older gladiff) is refused the same way
    with pytest.raises(ckpt.UnsafeCheckpointError, match=refused):
        ckpt.read_checkpoint(newest)
    assert not marker.exists()
    pickle.loads((newest / ".metadata").read_bytes())  # the payload is live: plain pickle runs it
    assert marker.exists()


def test_a_crafted_value_inside_a_shard_is_refused_on_resume(run, tmp_path):
    newest = ckpt.checkpoint_dir(run) / "step-00000004.dcp"
    marker = tmp_path / "code-ran"
    full = tmp_path / "full.pt"
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    dcp_to_torch_save(newest, full)  # the genuine state, rewritten with one crafted optimizer value
    state = torch.load(full, weights_only=False)
    state["optimizer"]["param_groups"][0]["lr"] = Payload(marker)
    for f in newest.glob("*distcp"):
        f.unlink()
    dcp.save(state, checkpoint_id=newest)
    _reseal(newest)

    shard = newest / "__0_0.distcp"
    with pytest.raises(ckpt.UnsafeCheckpointError, match=rf"refusing {shard}: its value 'optimizer\.param_groups"):
        _train(_cfg(run, steps=6, resume=True))
    assert not marker.exists()
    target = {"optimizer": {"param_groups": [{"lr": None}]}}
    dcp.load(target, checkpoint_id=str(newest), planner=DefaultLoadPlanner(allow_partial_load=True))
    assert marker.exists()  # the payload is live: DCP's own planner runs it


def test_damage_inside_a_shard_is_skipped_for_the_previous_checkpoint(run):
    newest = ckpt.checkpoint_dir(run) / "step-00000004.dcp"
    shard = newest / "__0_0.distcp"
    before = _stock_weights(newest)
    weight = before["final_layer.linear.weight"]
    data = bytearray(shard.read_bytes())
    at = bytes(data).find(weight.numpy().tobytes())  # the tensor's own bytes inside the shard
    assert at > 0
    data[at + 8:at + 12] = b"\x00\x00\xc0\x7f"  # 4 bytes of it become a NaN: same length, readable
    shard.write_bytes(bytes(data))

    with pytest.warns(UserWarning, match=r"skipping unusable checkpoint.*damaged: __0_0\.distcp has SHA-256"):
        path, state = ckpt.newest_valid_checkpoint(run)
    assert path.name == "step-00000002.dcp" and state["step"] == 2
    with pytest.warns(UserWarning, match="damaged"):
        assert load_trained(run).step == 2
    # Without the checksums the damage loads silently: it is inside the tensor data.
    (newest / SUMS).unlink()
    with pytest.warns(UserWarning, match="no recorded checksums"):
        assert ckpt.newest_valid_checkpoint(run)[0] == newest
    damaged = _stock_weights(newest)["final_layer.linear.weight"]
    assert damaged.isnan().sum() == 1 and not state_equal({"w": damaged}, {"w": weight})


def test_sharded_checkpoint_without_checksums_loads_with_a_note(run):
    newest = ckpt.checkpoint_dir(run) / "step-00000004.dcp"
    (newest / SUMS).unlink()  # as gladiff wrote them before checksums
    with pytest.warns(UserWarning, match=rf"note: checkpoint {newest} has no recorded checksums"):
        trained = load_trained(run)
    assert trained.step == 4 and state_equal(trained.model.state_dict(), _stock_weights(newest))
