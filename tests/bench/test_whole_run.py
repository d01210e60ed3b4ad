"""Timing whole commands (``gladiff.bench.whole_run``) and the two GPU scripts built on it,
``benchmarks/train_vs_bench.py`` and ``benchmarks/compile_payback.py``, on a CPU: the arithmetic
against hand-worked numbers, and each script end to end on a tiny model (``--smoke``)."""
import json

import pytest
import torch

from gladiff.bench.model import run_model_bench
from gladiff.bench.whole_run import (compile_choice, payback_constants, steady_summary,
                                     write_synthetic_latents)
from gladiff.data import LatentDataset
from gladiff.models.payback import Payback, explain


def _windows(rates, every=10, batch=64, first_extra=30.0):
    """Log windows of a run: ``every`` steps per window at ``rates`` img/s, the first ``first_extra`` s longer."""
    out, elapsed = [], 0.0
    for i, rate in enumerate(rates):
        elapsed += every * batch / rate + (first_extra if i == 0 else 0.0)
        out.append({"step": (i + 1) * every, "img_per_s": every * batch / (elapsed - (out[-1]["elapsed_s"] if out else 0)),
                    "elapsed_s": elapsed})
    return out


def test_steady_rate_and_warm_up_from_the_log_windows():
    windows = _windows([100, 150, 200, 200, 190, 210], first_extra=30.0)
    s = steady_summary(windows, batch=64, wall_s=windows[-1]["elapsed_s"] + 7.0)
    assert s["steady_img_s"] == pytest.approx(200)  # median of the windows ending after step 30
    # the loop took 30 s + 60 steps at their rates; 60 steps at 200 img/s would take 19.2 s
    expected_loop = 30.0 + 10 * 64 * (1 / 100 + 1 / 150 + 1 / 200 + 1 / 200 + 1 / 190 + 1 / 210)
    assert s["loop_s"] == pytest.approx(expected_loop)
    assert s["warmup_s"] == pytest.approx(expected_loop - 60 * 64 / 200)
    assert s["startup_s"] == pytest.approx(7.0) and s["steps"] == 60
    with pytest.raises(ValueError, match="logged nothing"):
        steady_summary([], batch=64)


def test_payback_constants_from_an_eager_and_a_compiled_run():
    eager = steady_summary(_windows([100] * 6, first_extra=2.0), batch=64)
    fast = steady_summary(_windows([250] * 6, first_extra=42.0), batch=64)
    c = payback_constants(eager, fast)
    assert c["speedup"] == pytest.approx(2.5) and c["setup_s"] == pytest.approx(40.0)


def test_the_auto_decision_is_read_back_from_the_log_line():
    options = {"blocks": Payback(2.0, 30.0)}
    for choice in ("eager", "blocks"):
        out = f"DiG-S/2 ...\n{explain('--compile', choice, 100, 0.1, options)}\ndone: step 9\n"
        assert compile_choice(out) == choice
    assert compile_choice("no decision here") is None


def test_synthetic_latents_read_as_a_latents_dataset(tmp_path):
    folder = write_synthetic_latents(tmp_path / "lat", num=6, res=64, num_classes=10)
    ds = LatentDataset(folder, 64)
    x, y = ds[5]
    assert len(ds) == 6 and x.shape == (4, 8, 8) and x.dtype == torch.float32 and 0 <= y < 10
    assert ds.reads_from_disk and ds.manifest["dtype"] == "float16"
    with pytest.raises(ValueError, match="multiple of 8"):
        write_synthetic_latents(tmp_path / "bad", num=2, res=60)


def test_bench_can_measure_one_family_at_one_batch_only():
    with pytest.raises(ValueError, match="families must be"):
        run_model_bench(families=("DiX",))
    with pytest.raises(ValueError, match="no batch to measure"):
        run_model_bench(default_batches=False)


def test_train_vs_bench_smoke_writes_the_report(tmp_path, bench_script):
    script = bench_script("train_vs_bench.py", "train_vs_bench_script")
    assert script.main(["--smoke", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("train_vs_bench_*.json")
    report = json.loads(path.read_text())
    assert report["train"]["steady_img_s"] > 0 and report["train"]["steps"] == 6
    assert report["train"]["wall_s"] >= report["train"]["loop_s"] > 0
    assert "-m gladiff train --data latents:" in report["train_command"]
    assert "--compile none" in report["train_command"] and report["environment"]["torch"] == torch.__version__
    assert report["bench_img_s"] is None and report["ratio"] is None  # no GPU: no bench
    assert script.matching_mode("blocks", None) == "compile[blocks]"
    assert script.matching_mode("auto", "blocks") == "compile[blocks]"
    assert script.matching_mode("auto", "eager") == "eager" and script.matching_mode("model", None) == "compile"


def test_compile_payback_smoke_measures_and_prints_the_table(tmp_path, bench_script, compile_backend, capsys):
    script = bench_script("compile_payback.py", "compile_payback_script")
    assert script.main(["--smoke", "--work", "sample", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("compile_payback_sample_*.json")
    report = json.loads(path.read_text())
    result = report["results"]["DiG-S/2"]
    assert result["passes_per_run"] == 2 * 3  # 12 samples in batches of 8, DDIM 3 steps
    assert set(result["runs"]) == {"eager", "compile"} and compile_backend.graphs > 0
    # the printed line is Python that fills the table as gladiff.models.payback declares it
    table = {"sample": {}}
    exec(report["table"][0], {"SPEEDUPS": table, "Payback": Payback})
    assert table["sample"]["DiG-S/2"]["compile"].speedup == pytest.approx(result["compile"]["speedup"], rel=1e-2)
    assert report["table"][0] in capsys.readouterr().out
    with pytest.raises(SystemExit):
        script.main(["--smoke", "--work", "train", "--out", str(tmp_path)])
