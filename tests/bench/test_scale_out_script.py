"""benchmarks/scale_out.py on a CPU (``--smoke``, one process): its phases run end to end and write the
JSON the lead reads; the global batches it feeds 1 and N GPUs are the same numbers however they are cut.
(The measurements need GPUs; the 2-process paths of the same code are exercised by tests/train/test_scale_out.py
through the training loop's own pieces.)"""
import json
import math

import pytest
import torch



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
