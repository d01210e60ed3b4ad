"""benchmarks/glyphs_dig_vs_dit.py: both models get one recipe, the clock leaves evaluations out, the
sampling wrapper follows the EMA weights, and the CPU smoke mode runs the whole script end to end
(train, evaluate along the way, JSON, grid, plot, table). The experiment itself runs on a GPU."""
import dataclasses
import json
import re
import time

import pytest
import torch

from gladiff import create_model
from gladiff.models.dig import DiGBlock
from gladiff.models.dit import DiTBlock


@pytest.fixture(scope="module")
def cmp(bench_script):
    return bench_script("glyphs_dig_vs_dit.py", "glyphs_dig_vs_dit")


def test_runs_differ_only_in_the_model(cmp, tmp_path):
    dig, dit = (dataclasses.asdict(cmp.train_config(k, 64, 1, run_dir=tmp_path)) for k in ("DiG", "DiT"))
    assert {k for k in dig if dig[k] != dit[k]} == {"model"}
    assert (dig["model"], dit["model"]) == ("DiG-S/2", "DiT-S/2")
    for key, value in cmp.RECIPE.items():
        assert dig[key] == value, key
    assert (dig["data"], dig["objective"], dig["image_size"], dig["seed"]) == ("glyphs", "flow", 64, 1)


@pytest.mark.parametrize("size,tokens", [(64, 1024), (128, 4096)])
def test_networks_have_equal_shape_and_tokens(cmp, size, tokens):
    with torch.device("meta"):
        dig, dit = (create_model(cmp.MODELS[k], input_size=size, in_channels=3, num_classes=49, learn_sigma=False)
                    for k in ("DiG", "DiT"))
    for attr in ("depth", "hidden_size", "num_heads", "patch_size"):
        assert getattr(dig, attr) == getattr(dit, attr), attr
    assert (dig.depth, dig.hidden_size, dig.num_heads, dig.patch_size) == (12, 384, 6, 2)
    assert (size // dig.patch_size) ** 2 == tokens
    assert all(isinstance(b, DiGBlock) for b in dig.blocks) and all(isinstance(b, DiTBlock) for b in dit.blocks)


def test_ablation_runs_are_named_by_their_options(cmp):
    assert cmp.run_label("DiT", {}) == "DiT"
    assert cmp.run_label("DiG", {"scan_schedule": "flip", "dwconv": False}) == "DiG-dwconv=False-scan_schedule=flip"
    assert cmp.run_label("DiG", {"depth": 2, "hidden_size": 64, "num_heads": 2}, smoke=True) == "DiG-smoke"
    assert cmp.parse_model_opt("dwconv=false") == ("dwconv", False)


def test_clock_leaves_the_paused_time_out(cmp):
    clock = cmp.TrainClock(torch.device("cpu"))
    clock.start()
    time.sleep(0.05)
    clock.pause()
    time.sleep(0.2)  # an evaluation
    clock.start()
    time.sleep(0.05)
    assert 0.09 < clock.elapsed() < 0.2
    clock.pause()
    assert 0.09 < clock.wall < 0.2 and clock.elapsed() == clock.wall


def test_sampling_wrapper_follows_the_ema_weights(compile_backend):
    """One compiled wrapper serves every evaluation: it must see the EMA's in-place updates."""
    from gladiff.sample.graphed import for_sampling
    from gladiff.train.ema import EMA

    torch.manual_seed(0)
    model = create_model("DiT-S/2", input_size=8, in_channels=3, num_classes=4, learn_sigma=False, depth=1,
                         hidden_size=32, num_heads=2)
    ema = EMA(model, 0.5)
    net = for_sampling(ema.model, "compile", "cpu")
    x, t, y = torch.randn(2, 3, 8, 8), torch.tensor([10.0, 500.0]), torch.tensor([0, 3])
    with torch.no_grad():
        before = net(x, t, y)
        for p in model.parameters():
            p.add_(0.1)
        ema.update(model)
        after = net(x, t, y)
        torch.testing.assert_close(after, ema.model(x, t, y))
    assert compile_backend.graphs > 0 and not torch.allclose(before, after)


def test_smoke_runs_both_models_then_plots(cmp, tmp_path, capsys, one_torch_thread):
    out = tmp_path / "results"
    for kind in ("DiG", "DiT"):
        assert cmp.main(["run", "--smoke", "--model", kind, "--out-dir", str(out)]) == 0
        run = json.loads((out / f"16px_{kind}-smoke_seed0.json").read_text())
        assert run["done"] and run["stopped_by"] == "max_steps" and run["smoke"]
        assert run["environment"]["command"] == f"python benchmarks/glyphs_dig_vs_dit.py run --smoke --model {kind} " \
                                                f"--out-dir {out}"
        assert run["train_config"]["model"] == cmp.MODELS[kind] and run["tokens"] == 64
        steps = [p["step"] for p in run["points"]]
        assert steps == [3, 6]  # every 3 steps, and at the end
        for p in run["points"]:
            assert p["gpu_seconds"] is None and 0 < p["train_seconds"] < p["wall_seconds"]
            assert p["images_seen"] == 8 * p["step"] and p["loss"] > 0
            assert {"accuracy", "fd", "fd_real_halves", "precision", "recall", "n"} <= set(p)
            assert p["n"] == 2 * 49 and p["n_reference"] == 2 * 49
        assert (out / f"16px_{kind}-smoke_seed0.jpg").stat().st_size > 0
    assert cmp.main(["plot", "--dir", str(out)]) == 0
    assert (out / "glyphs_dig_vs_dit_16px.png").stat().st_size > 0
    assert not (out / "glyphs_srem_ablation_16px.png").exists()  # no ablation run yet
    text = capsys.readouterr().out
    assert "| DiG-smoke | 0 | end | 6 |" in text and "| DiT-smoke | 0 | end | 6 |" in text
    assert "SREM ablation" not in text

    # an ablation run: its own figure and table, kept out of the DiG vs DiT ones
    assert cmp.main(["run", "--smoke", "--model", "DiG", "--model-opt", "scan_schedule=causal", "--model-opt",
                     "dwconv=false", "--out-dir", str(out)]) == 0
    # file names keep to [A-Za-z0-9._-] (the device tool would not bring back a name with "="); the label keeps it
    abl = json.loads((out / "16px_DiG-dwconv_False-scan_schedule_causal-smoke_seed0.json").read_text())
    assert abl["done"] and abl["label"] == "DiG-dwconv=False-scan_schedule=causal-smoke"
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", f.name) for f in out.iterdir())
    capsys.readouterr()
    assert cmp.main(["plot", "--dir", str(out)]) == 0
    assert (out / "glyphs_srem_ablation_16px.png").stat().st_size > 0
    main_table, ablation = capsys.readouterr().out.split("### SREM ablation at 16 px, step 6")
    assert "causal" not in main_table and "| DiG-smoke | 0 | end | 6 |" in main_table
    rows = [line for line in ablation.splitlines() if line.startswith("| ") and line[2].isalpha()][1:]
    assert [row.split(" | ")[:4] for row in rows] == [["| srem", "on", "0", "6"], ["| causal", "off", "0", "6"]]


@pytest.mark.parametrize("steps", ["1", "-3"])
def test_a_run_of_fewer_than_two_steps_is_refused(cmp, tmp_path, steps):
    """The first step is off the clock (compilation, the loader's start): --max-steps 1 used to train a
    second step past its limit."""
    with pytest.raises(SystemExit, match="--max-steps must be 0"):
        cmp.main(["run", "--max-steps", steps, "--minutes", "0", "--out-dir", str(tmp_path), "--image-size", "16",
                  "--batch-size", "2", "--device", "cpu", "--compile", "none", "--per-class", "1", "--sample-steps", "1",
                  "--eval-every", "0"])  # small and quick should the check ever let it run
    assert not list(tmp_path.iterdir())


def _run(label, seed, fds, *, kind=None, opts=None, img_s=100.0):
    """A run JSON as the script writes it: one evaluation per GPU minute, 100 steps a minute."""
    points = [{"step": 100 * m, "gpu_seconds": 60.0 * m, "train_seconds": 60.0 * m, "accuracy": 0.02, "fd": fd,
               "fd_real_halves": 1.0, "precision": 0.1 * seed, "recall": 0.2} for m, fd in enumerate(fds, 1)]
    return {"label": label, "kind": kind or label, "seed": seed, "image_size": 64, "tokens": 1024,
            "model_opts": opts or {}, "img_per_s": img_s, "points": points}


def test_tables_give_the_mean_over_seeds_and_the_fd_at_every_minute(cmp):
    runs = [_run("DiG", 0, [400.0, 80.0, 30.0], img_s=100), _run("DiG", 1, [300.0, 60.0, 20.0], img_s=120),
            _run("DiT", 0, [350.0, 70.0, 40.0, 35.0])]
    text = cmp.table(runs)
    rows = {tuple(c.strip() for c in line.split("|")[1:4]): line for line in text.splitlines() if line.startswith("| ")}
    # the mean row of DiG's two seeds at the end (minute 3): FD 25, precision 0.05, 110 img/s; DiT has one seed
    assert rows[("DiG", "mean of 2", "end")].startswith(
        "| DiG | mean of 2 | end | 300 | 3.00 | 110 | 2.0% | 25.00 (1.00) | 0.050 |")
    assert not any(key[1].startswith("mean") for key in rows if key[0] == "DiT")
    # equal steps: step 300 is the largest step all three reached
    assert "| DiG | mean of 2 | step 300 | 300 |" in text and "| DiT | 0 | step 300 | 300 |" in text
    # FD at every whole GPU minute the three share (DiT's fourth minute is past DiG's end)
    minutes = text.split("FD at every GPU minute, 64 px:")[1].strip().splitlines()
    assert minutes[0] == "| GPU min | DiG 0 | DiG 1 | DiT 0 | DiG mean |"
    assert minutes[2:] == ["| 1 | 400.0 | 300.0 | 350.0 | 350.0 |", "| 2 | 80.0 | 60.0 | 70.0 | 70.0 |",
                           "| 3 | 30.0 | 20.0 | 40.0 | 25.0 |"]


def test_ablation_table_gives_the_mean_over_seeds_per_option_set(cmp):
    runs = [_run("DiG", 0, [50.0]), _run("DiG", 1, [30.0]),
            _run("DiG-dwconv=False", 0, [20.0], kind="DiG", opts={"dwconv": False}),
            _run("DiG-dwconv=False", 1, [24.0], kind="DiG", opts={"dwconv": False}),
            _run("DiG-scan_schedule=flip", 0, [45.0], kind="DiG", opts={"scan_schedule": "flip"})]
    ablation = cmp.table(runs).split("### SREM ablation at 64 px, step 100")[1]
    means = [line for line in ablation.splitlines() if "mean of" in line]
    assert [m.split(" | ")[:3] + [m.split(" | ")[6]] for m in means] == [
        ["| srem", "on", "mean of 2", "40.00 (1.00)"], ["| srem", "off", "mean of 2", "22.00 (1.00)"]]
    assert "| flip | on | 0 | 100 |" in ablation


def test_equal_steps_on_a_clock_take_each_runs_evaluation_nearest_the_common_step(cmp):
    """Runs evaluated every GPU minute reach a step at different evaluations: the faster run's point
    just past the slower run's last step is the equal-step one, not its point a minute earlier."""
    dig = _run("DiG", 0, [300.0, 200.0, 150.0])
    for p, step in zip(dig["points"], (268, 535, 1068)):
        p["step"] = step
    dit = _run("DiT", 0, [350.0, 280.0, 180.0])
    for p, step in zip(dit["points"], (213, 423, 1052)):
        p["step"] = step
    text = cmp.table([dig, dit])
    assert "| DiG | 0 | step 1052 | 1068 | 3.00 | 100 | 2.0% | 150.00 (1.00) |" in text
    assert "| DiT | 0 | step 1052 | 1052 |" in text
    # nothing within 3% of the step: no row rather than a point far from it
    dig["points"][2]["step"] = 1200
    assert "| DiG | 0 | step 1052 |" not in cmp.table([dig, dit])
