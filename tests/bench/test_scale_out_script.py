"""benchmarks/scale_out.py on a CPU (``--smoke``): its phases run end to end and write the JSON the lead
reads; the global batches it feeds 1 and N GPUs are the same numbers however they are cut; the resume
phase carries one sharded checkpoint from 2 gloo processes to 1 and back, the state unchanged.
(The measurements need GPUs; the 2-process paths of the same code are exercised by tests/train/test_scale_out.py
through the training loop's own pieces.)"""
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch

from tests.processes import run_to_end

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def one_thread():
    """A tiny model: one intra-op thread is fastest, and spinning threads on a shared CPU cost 10x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def script(monkeypatch, bench_script):
    monkeypatch.setenv("NCCL_NVLS_ENABLE", "0")  # the script sets it on import; restored after the test
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    return bench_script("scale_out.py", "scale_out_script")


def test_smoke_run_writes_every_phase(monkeypatch, tmp_path, script):
    assert script.main(["--smoke", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("scale_out_*_x1.json")
    report = json.loads(path.read_text())
    env = report["environment"]
    assert env["world_size"] == 1 and env["NCCL_NVLS_ENABLE"] == "0" and env["gla_backend"] == "chunk"
    assert "--smoke" in env["command"] and env["torch"] == torch.__version__
    assert report["throughput"]["one_gpu"]["img_per_s_per_gpu"] > 0
    losses = report["losses"]["one_gpu"]
    assert len(losses) == 3 and all(math.isfinite(v) and v > 0 for v in losses)
    assert report["losses"]["global_batch"] == 2 * report["losses"]["per_gpu_batch"]  # --simulate-gpus 2
    cases = report["memory"]["cases"]
    assert set(cases) == {"single", "single+ac"} and all(c["fits"] for c in cases.values())
    assert set(report["phase_seconds"]) == {"throughput", "losses", "memory"}


def test_global_batches_do_not_depend_on_how_they_are_cut(monkeypatch, script):
    batch = script.global_batch(7, 8, 4)
    assert torch.equal(batch[0], script.global_batch(7, 8, 4)[0])  # a function of (seed, step) alone
    assert not torch.equal(batch[0], script.global_batch(8, 8, 4)[0])
    y = batch[1]
    assert y.min() >= 0 and y.max() <= script.NUM_CLASSES  # NUM_CLASSES itself is the dropped label
    whole = script.slices(batch, 1, torch.device("cpu"))[0]
    halves = script.slices(batch, 2, torch.device("cpu"))
    for i in range(4):
        assert torch.equal(torch.cat([h[i] for h in halves]), whole[i])


def test_without_a_gpu_it_says_so_and_exits_cleanly(monkeypatch, tmp_path, capsys, script):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert script.main(["--out", str(tmp_path)]) == 0
    assert "no CUDA GPU" in capsys.readouterr().out and not list(tmp_path.iterdir())


def test_throughput_cases_get_baselines_with_the_same_checkpointing(tmp_path, script):
    """A ``+ac`` case is compared with one GPU *with* activation checkpointing, and the JSON name
    carries ``--tag``."""
    assert script.main(["--smoke", "--phases", "throughput", "--throughput-modes", "ddp", "fsdp+ac",
                        "--tag", "DiT", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("scale_out_*_x1_DiT.json")
    out = json.loads(path.read_text())["throughput"]
    assert {"one_gpu", "one_gpu+ac"} <= set(out) and out["model"] == "DiG-XL/2"
    assert all(out[k]["img_per_s_per_gpu"] > 0 and out[k]["steps"] >= 1 for k in ("one_gpu", "one_gpu+ac"))
    assert script.case_key("fsdp+ac", "blocks", 8) == "fsdp+ac_x8_compile-blocks"
    assert script.case_key("single", "none") == "one_gpu"


def _leg(tmp_path: Path, procs: int) -> None:
    """One resume leg in ``procs`` gloo processes under torchrun."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    done = run_to_end([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
                       "benchmarks/scale_out.py", "--smoke", "--phases", "resume", "--resume-dir",
                       str(tmp_path / "ckpt"), "--out", str(tmp_path)], env=env, cwd=ROOT, what=f"resume leg x{procs}")
    assert done.returncode == 0, done.stderr[-4000:]


def test_resume_carries_one_checkpoint_across_process_counts(monkeypatch, tmp_path, script):
    """2 FSDP processes -> 1 plain process -> 2 FSDP processes, each leg loading the last one's sharded
    checkpoint: the loaded state is identical to the saved one, and the retrained steps give the
    previous leg's losses."""
    _leg(tmp_path, 2)
    assert script.main(["--smoke", "--phases", "resume", "--resume-dir", str(tmp_path / "ckpt"),
                        "--out", str(tmp_path)]) == 0
    _leg(tmp_path, 2)
    legs = json.loads((tmp_path / "ckpt" / "resume_record.json").read_text())
    assert [(g["world_size"], g["mode"]) for g in legs] == [(2, "fsdp"), (1, "single"), (2, "fsdp")]
    assert legs[0]["loaded"] is None and [g["saved"]["step"] for g in legs] == [2, 4, 6]
    for before, leg in zip(legs, legs[1:]):
        assert leg["loaded"]["step"] == before["saved"]["step"]
        assert leg["loaded"]["written_by"] == before["world_size"]
        assert leg["loaded"]["identical"] and leg["loaded"]["digest"] == before["saved"]["digest"]
        assert leg["vs_previous_leg"]["steps"] == [before["saved"]["step"], before["saved"]["step"] + 1]
        assert leg["vs_previous_leg"]["max_rel_diff"] < 1e-5
    assert len({g["saved"]["digest"] for g in legs}) == 3  # training moved the state on

    # a leg whose load is lost (restore that reads the step but loads nothing) is caught by the digest
    import gladiff.train.loop as loop

    monkeypatch.setattr(loop, "restore", lambda found, state, dist: (int(found[1]["step"]), None))
    assert script.main(["--smoke", "--phases", "resume", "--resume-dir", str(tmp_path / "ckpt"),
                        "--out", str(tmp_path)]) == 0
    bad = json.loads((tmp_path / "ckpt" / "resume_record.json").read_text())[-1]
    assert bad["loaded"]["step"] == 6 and not bad["loaded"]["identical"]
    assert bad["vs_previous_leg"]["max_rel_diff"] > 1e-3


def test_summary_prices_the_paper_run_at_the_measured_rate(tmp_path, script):
    """1.2M steps x 256 images at 1,000 img/s over 8 GPUs: 307.2M / 1000 s = 85.3 h = 3.56 days,
    682.7 GPU-hours; the summary reads the JSON's throughput, losses and resume parts."""
    cost = script.paper_run_cost(1000.0, 8)
    assert cost["gpu_hours"] == pytest.approx(1_200_000 * 256 / 1000 / 3600 * 8) == pytest.approx(682.67, abs=0.01)
    assert cost["days"] == pytest.approx(3.556, abs=1e-3)
    report = {"environment": {"world_size": 8, "cards": ["NVIDIA H200"], "model": "DiG-XL/2", "torch": "2.11"},
              "throughput": {"resolution": 256, "per_gpu_batch": 32,
                             "one_gpu": {"step_s": 0.2, "img_per_s_per_gpu": 160.0, "img_per_s_total": 160.0,
                                         "peak_allocated_gb": 33.0},
                             "ddp_x8_compile-blocks": {"step_s": 0.256, "img_per_s_per_gpu": 125.0,
                                                       "img_per_s_total": 1000.0, "per_gpu_vs_one_gpu": 0.78125,
                                                       "peak_allocated_gb": 35.0}},
              "losses": {"global_batch": 128, "ddp_x8": {"losses": [1.0] * 50, "max_rel_diff": 2e-3,
                                                         "mean_rel_diff": 1e-3}}}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(report))
    text = script.summarize([str(path)])
    assert "| ddp_x8_compile-blocks | 256.0 | 125.0 | 0.781 | 35.0 | 3.6, 683 |" in text
    assert "| one_gpu | 200.0 | 160.0 | 1.000 | 33.0 | 22.2, 533 |" in text
    assert "ddp_x8 vs one GPU (128 per step, 50 steps): max relative difference 2.00e-03" in text


def test_bad_input_is_a_clear_error(tmp_path, script):
    """A global batch that does not split over the processes, and a file that is not a result JSON."""
    with pytest.raises(SystemExit, match="--resume-batch 5 must split evenly over 1 process"):
        script.main(["--smoke", "--phases", "resume", "--resume-batch", "5", "--resume-dir", str(tmp_path / "c"),
                     "--out", str(tmp_path)])
    assert not (tmp_path / "c").exists()
    (tmp_path / "x.json").write_text("[1, 2]")
    with pytest.raises(SystemExit, match="x.json is not a scale_out.py result JSON"):
        script.main(["--summarize", str(tmp_path / "x.json")])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fingerprint_catches_one_flipped_bit_and_ignores_layout(script, dtype):
    """Equal tensors give equal fingerprints however they were made (a copy, a reshape); one flipped
    bit anywhere, even in the last word, gives another; so does the same words in another order."""
    t = torch.randn(1000, 37, generator=torch.Generator().manual_seed(0)).to(dtype)
    fp = script.tensor_fingerprint(t)
    assert script.tensor_fingerprint(t.clone().reshape(37, 1000)) == fp
    assert script.tensor_fingerprint(t.t().contiguous().t()) == fp  # a non-contiguous view of the same values
    for index in (0, t.numel() - 1):
        flipped = t.clone().reshape(-1)
        words = flipped.view(torch.int16)
        words[index * (flipped.element_size() // 2)] ^= 1  # lowest bit of one value
        assert script.tensor_fingerprint(flipped) != fp
    assert script.tensor_fingerprint(t.flip(0)) != fp
