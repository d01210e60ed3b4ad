"""Checkpoint files: atomic writes, checksums, newest-valid discovery, strict loading, pruning that
keeps readable checkpoints, RNG states."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from gladiff.train import TrainConfig, train
from gladiff.train import checkpoint as ckpt
from tests.train.standins import TinyDigits, TinyEps, TinyNet, tiny_builder, state_equal


def _train(tmp_path, steps, resume=False, **kw):
    cfg = TrainConfig(**{**dict(run_dir=str(tmp_path / "run"), steps=steps, global_batch_size=4, ckpt_every=2,
                                keep_ckpts=0, log_every=1, device="cpu", tensorboard=False, resume=resume), **kw})
    return train(cfg, dataset=TinyDigits(16), objective=TinyEps(), model_builder=tiny_builder,
                 progress=False)


def test_write_interrupted_half_way_leaves_previous_checkpoint(tmp_path, monkeypatch):
    res = _train(tmp_path, 2)
    before = ckpt.read_checkpoint(res.checkpoint)
    real_save = torch.save

    def dying_save(obj, f, *a, **kw):  # half the bytes reach the disk, then the disk is "full"
        import io
        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(OSError, match="No space left"):
        _train(tmp_path, 4, resume=True)
    monkeypatch.undo()
    files = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
    assert files == ["step-00000002.pt", "step-00000002.pt.sha256"]  # no half file, no stray temp file
    after = ckpt.read_checkpoint(res.checkpoint)
    assert after["step"] == 2 and state_equal(before["model"], after["model"])
    # and the run continues from it
    assert _train(tmp_path, 4, resume=True).step == 4


def test_truncated_newest_checkpoint_is_skipped_for_the_previous(tmp_path):
    _train(tmp_path, 4)
    newest = ckpt.checkpoint_path(tmp_path / "run", 4)
    data = newest.read_bytes()
    newest.write_bytes(data[: len(data) // 3])  # e.g. a node died while the OS flushed it
    with pytest.warns(UserWarning, match="skipping unusable checkpoint.*step-00000004"):
        path, state = ckpt.newest_valid_checkpoint(tmp_path / "run")
    assert path.name == "step-00000002.pt" and state["step"] == 2
    with pytest.warns(UserWarning):
        assert _train(tmp_path, 6, resume=True).step == 6


def test_damage_inside_tensor_data_is_skipped_for_the_previous_checkpoint(tmp_path):
    _train(tmp_path, 4)
    newest = ckpt.checkpoint_path(tmp_path / "run", 4)
    weight = ckpt.read_checkpoint(newest)["model"]["out.weight"]
    data = bytearray(newest.read_bytes())
    at = bytes(data).find(weight.numpy().tobytes())  # the tensor's own bytes inside the zip
    assert at > 0
    data[at + 4:at + 8] = b"\x00\x00\xc0\x7f"  # 4 bytes of it become a NaN: same length, still a valid zip
    newest.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"step-00000004\.pt is damaged: step-00000004\.pt has SHA-256"):
        ckpt.read_checkpoint(newest)
    with pytest.warns(UserWarning, match=r"skipping unusable checkpoint.*step-00000004\.pt is damaged"):
        path, state = ckpt.newest_valid_checkpoint(tmp_path / "run")
    assert path.name == "step-00000002.pt" and state["step"] == 2
    with pytest.warns(UserWarning, match="damaged"):
        assert _train(tmp_path, 6, resume=True).step == 6  # resumed from step 2, rewrote step 4
    assert ckpt.read_checkpoint(newest)["model"]["out.weight"].isfinite().all()
    # Without its checksum the same damage loads silently: it is inside the tensor data.
    newest.write_bytes(bytes(data))
    ckpt.sidecar(newest).unlink()
    with pytest.warns(UserWarning, match=rf"note: checkpoint {newest} has no recorded checksums"):
        assert ckpt.read_checkpoint(newest)["model"]["out.weight"].isnan().sum() == 1


def test_checkpoint_without_checksum_still_loads_with_a_note(tmp_path):
    res = _train(tmp_path, 2)
    expected = ckpt.read_checkpoint(res.checkpoint)
    ckpt.sidecar(res.checkpoint).unlink()  # as gladiff wrote checkpoints before checksums
    with pytest.warns(UserWarning, match="note: .*step-00000002.pt has no recorded checksums"):
        state = ckpt.read_checkpoint(res.checkpoint)
    assert state_equal(state["model"], expected["model"])
    with pytest.warns(UserWarning, match="no recorded checksums"):
        assert _train(tmp_path, 4, resume=True).step == 4


def test_pruning_never_deletes_the_good_checkpoints_for_an_unreadable_newer_one(tmp_path, capsys):
    """The reported case: an unreadable step-00000020.pt and --resume --keep-ckpts 1 deleted every
    good checkpoint and reported one that no longer existed."""
    run = tmp_path / "run"
    _train(tmp_path, 15, ckpt_every=5)  # steps 5, 10, 15
    (ckpt.checkpoint_dir(run) / "step-00000020.pt").write_bytes(b"not a checkpoint")
    with pytest.warns(UserWarning, match="skipping unusable checkpoint.*step-00000020"):
        res = _train(tmp_path, 16, resume=True, ckpt_every=5, keep_ckpts=1)
    assert res.step == 16 and res.checkpoint.name == "step-00000016.pt"
    assert ckpt.read_checkpoint(res.checkpoint)["step"] == 16  # the reported checkpoint exists and loads
    # the newest readable one is kept; the unreadable newer file is left alone, not counted
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step-00000020.pt", "step-00000016.pt"]
    # Pruning by hand: the last readable checkpoint survives whatever is newer or unreadable.
    ckpt.prune(run, keep=1)
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step-00000020.pt", "step-00000016.pt"]
    (ckpt.checkpoint_dir(run) / "step-00000018.pt").write_bytes(b"\x00" * 64)
    ckpt.prune(run, keep=3)
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step-00000020.pt", "step-00000018.pt",
                                                           "step-00000016.pt"]
    assert [p.name for p in ckpt.checkpoint_dir(run).iterdir() if p.suffix == ".sha256"] == ["step-00000016.pt.sha256"]
    # The checkpoint just written is never removed, not even below `keep` newer readable ones.
    ckpt.atomic_save(ckpt.read_checkpoint(res.checkpoint), ckpt.checkpoint_path(run, 20), checksum=True)
    ckpt.prune(run, keep=1, just_written=res.checkpoint)
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step-00000020.pt", "step-00000016.pt"]


def test_corrupted_bytes_and_foreign_files_are_not_checkpoints(tmp_path):
    p = tmp_path / "x.pt"
    p.write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="cannot be read"):
        ckpt.read_checkpoint(p)
    torch.save({"weights": torch.ones(2)}, p)
    with pytest.raises(ValueError, match="not a gladiff training checkpoint"):
        ckpt.read_checkpoint(p)
    torch.save({"format": ckpt.FORMAT, "step": 1}, p)
    with pytest.raises(ValueError, match="incomplete"):
        ckpt.read_checkpoint(p)


def test_atomic_save_never_leaves_a_partial_file(tmp_path):
    target = tmp_path / "a" / "f.pt"
    ckpt.atomic_save({"v": torch.arange(3)}, target)
    assert torch.equal(torch.load(target)["v"], torch.arange(3))
    assert [p.name for p in target.parent.iterdir()] == ["f.pt"]


def test_loading_a_different_model_says_what_differs():
    small, wide = TinyNet(width=8), TinyNet(width=16)
    with pytest.raises(ValueError, match=r"different model.*shape mismatches.*inp\.weight.*\(8, 1, 3, 3\)"):
        ckpt.load_model_state(wide, small.state_dict())
    sd = small.state_dict()
    sd["extra.weight"] = torch.zeros(1)
    del sd["out.bias"]
    with pytest.raises(ValueError, match=r"1 parameters missing.*out\.bias.*1 unexpected.*extra\.weight"):
        ckpt.load_model_state(TinyNet(width=8), sd)
    with pytest.raises(ValueError, match=r"depth: checkpoint 4 vs run 8"):
        ckpt.check_model_spec({"name": "DiG-S/2", "depth": 4}, {"name": "DiG-S/2", "depth": 8})


def test_rng_states_round_trip_through_a_file(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    torch.rand(5), np.random.rand(7), random.random()
    state = ckpt.capture_rng()
    expect = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    ckpt.atomic_save({"rng": state}, tmp_path / "r.pt")
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    ckpt.restore_rng(torch.load(tmp_path / "r.pt", weights_only=True)["rng"])
    got = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    assert torch.equal(expect[0], got[0]) and np.array_equal(expect[1], got[1]) and expect[2] == got[2]


def test_resolve_checkpoint_accepts_file_or_run_folder(tmp_path):
    _train(tmp_path, 4)
    run = tmp_path / "run"
    assert ckpt.resolve_checkpoint(run).name == "step-00000004.pt"
    assert ckpt.resolve_checkpoint(run / "checkpoints").name == "step-00000004.pt"
    assert ckpt.resolve_checkpoint(run / "checkpoints" / "step-00000002.pt").name == "step-00000002.pt"
    with pytest.raises(FileNotFoundError):
        ckpt.resolve_checkpoint(tmp_path / "nope")
    with pytest.raises(ValueError, match="no valid checkpoint"):
        ckpt.resolve_checkpoint(tmp_path)
