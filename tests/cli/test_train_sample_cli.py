"""`gladiff train` / `sample` / `demo` end to end with real (tiny) DiG models, objectives and data."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from gladiff.cli import main
from gladiff.sample import read_npz
from gladiff.train import checkpoint as ckpt

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--model", "DiG-S/4", "--model-opt", "depth=2", "--model-opt", "hidden_size=32",
        "--model-opt", "num_heads=1"]
QUIET = ["--device", "cpu", "--no-tensorboard", "--log-every", "1"]


@pytest.mark.parametrize("objective,sample_args", [
    ("ddpm", ["--sampler", "ddim", "--steps", "4", "--cfg-scale", "2.0"]),
    ("flow", ["--sampler", "euler", "--steps", "3", "--cfg-scale", "1.5", "--execution", "compile",
              "--compile-scope", "blocks"]),
])
def test_train_then_sample_on_digits(tmp_path, objective, sample_args, compile_backend):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--data", "digits", "--image-size", "16", *TINY,
                 "--objective", objective, "--steps", "3", "--global-batch-size", "8", *QUIET]) == 0
    state = ckpt.read_checkpoint(ckpt.checkpoint_path(run, 3))
    assert state["model_spec"]["learn_sigma"] == (objective == "ddpm")  # 2C outputs for DDPM's variance
    assert state["data_info"]["in_channels"] == 1 and state["data_info"]["sample_size"] == 16
    out_npz, out_png = tmp_path / "s.npz", tmp_path / "g.png"
    assert main(["sample", str(run), "--out", str(out_npz), "--out", str(out_png), "--per-class", "2",
                 "--classes", "3,7", "--batch-size", "3", "--device", "cpu", "--no-progress",
                 *sample_args]) == 0
    images, labels = read_npz(out_npz)
    assert images.shape == (4, 16, 16, 1) and labels.tolist() == [3, 7, 3, 7]
    assert (compile_backend.graphs > 0) == ("compile" in sample_args)  # --execution/--compile-scope arrived
    assert out_png.stat().st_size > 0


@pytest.mark.parametrize("compile", ["none", "blocks"])
def test_real_dig_and_ddpm_resume_bitwise(tmp_path, compile, compile_backend):
    """With every source of randomness in play (label dropout, timesteps, noise, data order):
    4 steps straight == 2 steps + resume + 2 steps, bit for bit; also with the blocks compiled."""
    args = [*TINY, "--objective", "ddpm", "--global-batch-size", "8", "--ckpt-every", "2", *QUIET,
            "--compile", compile]
    assert main(["train", "--run-dir", str(tmp_path / "a"), "--steps", "4", *args]) == 0
    assert main(["train", "--run-dir", str(tmp_path / "b"), "--steps", "2", *args]) == 0
    torch.manual_seed(123)
    assert main(["train", "--run-dir", str(tmp_path / "b"), "--steps", "4", "--resume", *args]) == 0
    a = ckpt.read_checkpoint(ckpt.checkpoint_path(tmp_path / "a", 4))
    b = ckpt.read_checkpoint(ckpt.checkpoint_path(tmp_path / "b", 4))
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key])
    assert (compile_backend.graphs > 0) == (compile != "none")  # --compile reached the loop
    mid = ckpt.read_checkpoint(ckpt.checkpoint_path(tmp_path / "a", 2))
    assert not torch.equal(mid["model"]["final_layer.linear.weight"], a["model"]["final_layer.linear.weight"])


def test_yaml_config_with_flag_overrides_is_recorded(tmp_path):
    run = tmp_path / "run"
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"model": "DiG-S/4", "model_opts": {"depth": 2, "hidden_size": 32,
                                      "num_heads": 1}, "objective": "flow", "steps": 5,
                                      "global_batch_size": 4, "lr": 5e-4}))
    assert main(["train", "--config", str(config), "--run-dir", str(run), "--steps", "2",
                 "--model-opt", "hidden_size=64", *QUIET]) == 0
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["steps"] == 2 and saved["lr"] == 5e-4
    assert saved["model_opts"] == {"depth": 2, "hidden_size": 64, "num_heads": 1}
    state = ckpt.read_checkpoint(ckpt.checkpoint_path(run, 2))
    assert state["model"]["x_embedder.weight"].shape[0] == 64  # the flag's width was built


def test_resume_into_another_model_fails_with_a_message(tmp_path, capsys):
    run = tmp_path / "run"
    args = ["train", "--run-dir", str(run), *TINY, "--objective", "flow", "--global-batch-size", "4", *QUIET]
    assert main([*args, "--steps", "1"]) == 0
    assert main([*args, "--steps", "2", "--resume", "--model-opt", "hidden_size=64"]) == 2
    err = capsys.readouterr().err
    assert "different model" in err and "hidden_size" in err


def _tiny_vae(path: Path) -> Path:
    """A randomly initialised AutoencoderKL of the SD architecture family (8x down), saved locally."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
                  block_out_channels=(32, 32, 32, 32), norm_num_groups=32,
                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                  sample_size=32, scaling_factor=0.18215).save_pretrained(path)
    return path


def test_train_and_sample_on_a_tiny_latent_folder(tmp_path):
    from gladiff.data.latents import save_latents

    vae = _tiny_vae(tmp_path / "vae")
    rng = np.random.default_rng(0)
    save_latents(tmp_path / "lat", rng.normal(size=(12, 4, 4, 4)).astype(np.float32) * 5,
                 np.arange(12) % 3, classes=["a", "b", "c"], image_size=32, vae=str(vae))
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--data", f"latents:{tmp_path / 'lat'}",
                 "--image-size", "32", *TINY, "--objective", "ddpm", "--steps", "2", "--global-batch-size", "4",
                 *QUIET]) == 0
    info = ckpt.read_checkpoint(ckpt.checkpoint_path(run, 2))["data_info"]
    assert info["is_latent"] and info["vae"] == str(vae) and info["in_channels"] == 4
    out = tmp_path / "s.npz"
    assert main(["sample", str(run), "--out", str(out), "--num-samples", "3", "--steps", "2",
                 "--device", "cpu", "--no-progress"]) == 0
    images, labels = read_npz(out)
    assert images.shape == (3, 32, 32, 3)  # decoded through the VAE: pixels, RGB
    assert set(labels.tolist()) <= {0, 1, 2}


def test_demo_command_writes_grid_and_npz(tmp_path):
    run = tmp_path / "demo"
    assert main(["demo", "--run-dir", str(run), "--steps", "2", "--per-class", "2", "--no-score",
                 "--device", "cpu"]) == 0
    images, labels = read_npz(run / "samples.npz")
    assert images.shape == (20, 16, 16, 1) and np.bincount(labels).tolist() == [2] * 10
    assert (run / "grid.png").stat().st_size > 0
    # a second run reuses the finished training (no new checkpoint) and samples again
    before = ckpt.list_checkpoints(run)
    assert main(["demo", "--run-dir", str(run), "--steps", "2", "--per-class", "1", "--no-score",
                 "--device", "cpu"]) == 0
    assert ckpt.list_checkpoints(run) == before
    assert read_npz(run / "samples.npz")[0].shape == (10, 16, 16, 1)


def test_demo_yaml_is_the_demo_recipe():
    from gladiff.cli.demo import DEMO_TRAIN

    assert yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text()) == DEMO_TRAIN


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_resolve_to_zoo_models(path):
    from gladiff.models.zoo import model_config
    from gladiff.train import resolve_config

    cfg = resolve_config(path)
    model_config(cfg.model)  # raises for a name the zoo does not know
    assert cfg.steps > 0 and cfg.global_batch_size > 0


def test_step_flags_take_numbers_or_respacings():
    from gladiff.cli import build_parser

    args = build_parser().parse_args(["train", "--sample-steps", "ddim50"])
    assert args.sample_steps == "ddim50"
    assert build_parser().parse_args(["sample", "x", "--out", "a.npz", "--steps", "250"]).steps == 250
