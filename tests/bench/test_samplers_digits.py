"""benchmarks/samplers_digits.py: the two trainings are the demo recipe and differ only in the
objective; every listed sampler exists; the table puts each number in its cell. (The benchmark
itself takes about ten minutes of CPU; its result lives in benchmarks/results/.)"""
import dataclasses

import pytest

from gladiff.diffusion import OBJECTIVES


@pytest.fixture(scope="module")
def bench(bench_script):
    return bench_script("samplers_digits.py", "samplers_digits")


def test_trainings_are_the_demo_recipe_with_each_objective(bench, tmp_path):
    flow, ddpm = (dataclasses.asdict(bench.train_config(o, tmp_path, 1500)) for o in ("flow", "ddpm"))
    assert {k for k in flow if flow[k] != ddpm[k]} == {"objective", "run_dir"}
    for key, value in bench.DEMO_TRAIN.items():
        if key not in ("model", "objective", "steps", "ckpt_every"):
            assert flow[key] == value, key
    assert flow["steps"] == flow["ckpt_every"] == 1500  # one checkpoint, at the end
    assert flow["model"] == "DiT-S/4" and flow["model_opts"] == {"depth": 4, "hidden_size": 128, "num_heads": 2}
    assert dataclasses.asdict(bench.train_config("flow", tmp_path, 9, "DiG-S/4"))["model"] == "DiG-S/4"


def test_samplers_exist_and_the_table_places_each_number(bench):
    for objective, samplers in bench.SAMPLERS.items():
        assert set(samplers) <= set(OBJECTIVES[objective].samplers)
    rows = [dict(objective="flow", sampler="euler", steps=10, accuracy=0.5, fd=20.04),
            dict(objective="flow", sampler="euler", steps=250, accuracy=0.914, fd=3.0),
            dict(objective="ddpm", sampler="unipc", steps=20, accuracy=1.0, fd=2.56)]
    table = bench.format_table(rows, [10, 20, 250]).splitlines()
    assert table[0] == "| objective | sampler | 10 steps | 20 steps | 250 steps |"
    assert table[2] == "| flow | euler | 50% / 20.0 |  | 91% / 3.0 |"
    assert table[3] == "| ddpm | unipc |  | 100% / 2.6 |  |"
