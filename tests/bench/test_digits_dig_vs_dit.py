"""benchmarks/digits_dig_vs_dit.py compares like with like: the DiG and DiT runs share every training
setting but the model, and the two networks have the same depth, width, heads and patch.
(The comparison itself takes ~20 minutes of CPU; its result lives in benchmarks/results/.)"""
import dataclasses

import pytest

from gladiff import create_model
from gladiff.models.dig import DiGBlock
from gladiff.models.dit import DiTBlock



@pytest.fixture(scope="module")
def cmp(bench_script):
    return bench_script("digits_dig_vs_dit.py", "digits_dig_vs_dit")


def test_runs_differ_only_in_the_model(cmp, tmp_path):
    dig, dit = (dataclasses.asdict(cmp.train_config(k, 1, tmp_path, 1500, "cpu")) for k in ("DiG", "DiT"))
    differing = {k for k in dig if dig[k] != dit[k]}
    assert differing == {"model", "run_dir"}
    assert (dig["model"], dit["model"]) == ("DiG-S/4", "DiT-S/4")
    # ... and both are the demo recipe (configs/demo.yaml) with the requested seed.
    for key, value in cmp.DEMO_TRAIN.items():
        if key not in ("model", "seed"):
            assert dig[key] == value, key
    assert dig["seed"] == 1 and dig["steps"] == 1500


def test_networks_have_equal_depth_width_heads_patch(cmp, tmp_path):
    models = {}
    for kind in ("DiG", "DiT"):
        cfg = cmp.train_config(kind, 0, tmp_path, 1500, "cpu")
        models[kind] = create_model(cfg.model, input_size=16, in_channels=1, num_classes=10,
                                    learn_sigma=False, **cfg.model_opts)
    dig, dit = models["DiG"], models["DiT"]
    for attr in ("depth", "hidden_size", "num_heads", "patch_size", "grid"):
        assert getattr(dig, attr) == getattr(dit, attr), attr
    assert (dig.depth, dig.hidden_size, dig.num_heads, dig.patch_size) == (4, 128, 2, 4)
    assert all(isinstance(b, DiGBlock) for b in dig.blocks) and len(dig.blocks) == 4
    assert all(isinstance(b, DiTBlock) for b in dit.blocks) and len(dit.blocks) == 4


def test_summary_means_over_seeds(cmp):
    def run(kind, seed, acc, fd):
        return dict(kind=kind, seed=seed, params=10, accuracy=acc, fd=fd, fd_real_halves=1.0,
                    train_seconds=100.0 + seed, img_per_s=50.0)

    summary = cmp.summarize([run("DiG", 0, 0.9, 4.0), run("DiT", 0, 0.5, 9.0), run("DiG", 1, 0.7, 2.0)])
    assert summary["DiG"]["seeds"] == [0, 1] and summary["DiT"]["seeds"] == [0]
    assert summary["DiG"]["accuracy"] == pytest.approx(0.8)
    assert summary["DiG"]["fd"] == pytest.approx(3.0)
    assert summary["DiG"]["train_seconds"] == pytest.approx(100.5)
    assert summary["DiT"]["fd"] == pytest.approx(9.0)
