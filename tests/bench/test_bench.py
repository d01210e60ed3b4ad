"""The benchmark harness on a CPU: protocol arithmetic, result summaries, plots, and the clean exit
without a GPU. (The measurements themselves need a GPU; their results live in benchmarks/results/.)"""
import json
import sys

import pytest
import torch

from gladiff.bench import common
from gladiff.bench.model import _linear_flops, default_batch, plot_rows, run_model_bench, summarize
from gladiff.bench.op import format_rows
from gladiff.cli import main


def test_default_batch_keeps_about_8k_latent_tokens():
    assert [default_batch(r) for r in (256, 512, 768, 1024, 1792, 2048)] == [32, 8, 3, 2, 1, 1]
    for res in range(256, 2049, 256):
        tokens = default_batch(res) * (res // 16) ** 2  # patch 2 on a res/8 latent
        assert tokens <= 8192 or default_batch(res) == 1


def test_linear_flops_match_the_spec_gmacs():
    # docs/architecture.md: DiG-XL/2 114.67 GMACs (linear + conv) per 256x256 image forward; DiT-S/2 5.45.
    assert _linear_flops("DiG", "XL/2", 256, 32, "train") == pytest.approx(2 * 3 * 114.67e9 * 32, rel=1e-3)
    assert _linear_flops("DiT", "S/2", 256, 4, "sample") == pytest.approx(2 * 5.45e9 * 4, rel=2e-3)


def _row(family, mode, img_s, gb, attn=None, size="S/2", res=256, batch=32, work="train"):
    return dict(family=family, size=size, res=res, batch=batch, work=work, mode=mode, attn=attn,
                img_s=img_s, ms=batch / img_s * 1e3, peak_gb=gb, linear_tflops=100.0)


def test_summary_pairs_the_best_mode_of_each_family():
    rows = [_row("DiG", "eager", 100, 3.0), _row("DiG", "graph", 300, 3.5),
            _row("DiT", "graph", 200, 2.0, "flash"), _row("DiT", "compile", 250, 2.5, "cudnn"),
            dict(_row("DiT", "eager", 999, 1.0, "flash"), error="out of memory")]
    rows[-1].pop("img_s")
    (s,) = summarize(rows, ceiling=800.0)
    assert s["dig_mode"] == "graph" and s["dit_mode"] == "compile/cudnn"
    assert s["speed_ratio"] == pytest.approx(300 / 250) and s["memory_ratio"] == pytest.approx(3.5 / 2.5)
    assert s["dig_linear_frac"] == pytest.approx(100 / 800)


def test_summary_names_block_by_block_compilation():
    rows = [dict(_row("DiG", "compile+graph", 300, 2.0), compile_scope="model"),
            dict(_row("DiG", "compile+graph", 310, 1.8), compile_scope="blocks"),
            dict(_row("DiT", "compile+graph", 400, 2.1, "cudnn"), compile_scope="model"),
            dict(_row("DiT", "compile+graph", 390, 2.0, "cudnn"), compile_scope="blocks")]
    (s,) = summarize(rows, ceiling=800.0)
    assert s["dig_mode"] == "compile+graph[blocks]" and s["dit_mode"] == "compile+graph/cudnn"
    assert s["speed_ratio"] == pytest.approx(310 / 400) and s["memory_ratio"] == pytest.approx(1.8 / 2.1)


def test_unknown_compile_scope_is_refused():
    with pytest.raises(ValueError, match="compile scope"):
        run_model_bench(compile_scopes=("layers",))


def test_plot_is_written(tmp_path):
    rows = [_row(f, "graph", v, 2.0 * r / 256, res=r, batch=default_batch(r)) for f, v0 in (("DiG", 300), ("DiT", 200))
            for r, v in ((256, v0), (512, v0 / 5))]
    path = tmp_path / "bench.png"
    assert plot_rows(summarize(rows, 800.0), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_op_table_formats_missing_numbers():
    text = format_rows([dict(mixer="gla", backend="triton", scan="col", reverse=True, B=1, H=6, T=16384,
                             **{"pass": "fwd+bwd"}, eager_ms=1.5, graph_ms=None, target_ms=1.0)])
    assert "col-rev" in text and "1.500" in text and " - " in text


def test_bench_without_gpu_is_an_error_of_one_line(monkeypatch, capsys):
    """Nothing measured is a failure: a script running `gladiff bench` must see a non-zero status."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for argv in (["bench"], ["bench", "--op"]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "gladiff bench: error:" in err and "no CUDA GPU" in err


def test_bench_flags_are_checked_before_looking_for_a_gpu(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for argv, words in ((["--models", "Q/2"], "unknown model 'DiG-Q/2'"), (["--res", "0"], "--res"),
                        (["--out", "x.txt"], "must end in .json"), (["--reps", "0"], "--reps"),
                        (["--modes", "fast"], "unknown mode 'fast'")):
        assert main(["bench", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err and "no CUDA GPU" not in err


def test_environment_and_json(tmp_path):
    env = common.environment()
    assert env["torch"] == torch.__version__ and "command" in env and "gla_triton_config" in env
    path = common.write_json(tmp_path / "r" / "x.json", dict(env, value=1.5))
    assert json.loads(path.read_text())["value"] == 1.5


def test_command_line_names_the_module_entry_point(monkeypatch):
    import gladiff.__main__ as entry

    monkeypatch.setattr(sys, "argv", [entry.__file__, "bench", "--op"])
    assert common.command_line() == "python -m gladiff bench --op"
    monkeypatch.setattr(sys, "argv", ["/x/benchmarks/profile_step.py", "--compile"])
    assert common.command_line() == "profile_step.py --compile"
