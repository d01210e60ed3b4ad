"""`gladiff train --data glyphs`, `sample` and `eval` end to end: a tiny DiG learns, its samples get
the glyph check without being told."""
from __future__ import annotations

import json

import numpy as np

from gladiff.cli import main
from gladiff.data.glyphs import CLASSES, NUM_CLASSES
from gladiff.sample import read_npz
from gladiff.train import checkpoint as ckpt

TINY = ["--model", "DiG-S/4", "--model-opt", "depth=2", "--model-opt", "hidden_size=64",
        "--model-opt", "num_heads=2"]


def test_train_on_glyphs_lowers_the_loss_then_samples_get_the_glyph_check(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--data", "glyphs", "--image-size", "32", *TINY,
                 "--objective", "flow", "--steps", "40", "--global-batch-size", "16", "--lr", "2e-3",
                 "--log-every", "5", "--device", "cpu", "--no-tensorboard", "--num-workers", "0"]) == 0
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 8
    assert np.mean(losses[-2:]) < 0.6 * np.mean(losses[:2])  # flow matching at 32 px: ~2 -> ~0.6
    info = ckpt.read_checkpoint(ckpt.checkpoint_path(run, 40))["data_info"]
    assert (info["in_channels"], info["sample_size"], info["classes"]) == (3, 32, list(CLASSES))

    out = tmp_path / "samples.npz"
    assert main(["sample", str(run), "--out", str(out), "--per-class", "1", "--sampler", "euler", "--steps", "3",
                 "--batch-size", "49", "--device", "cpu", "--no-progress"]) == 0
    images, labels = read_npz(out)
    assert images.shape == (NUM_CLASSES, 32, 32, 3) and labels.tolist() == list(range(NUM_CLASSES))
    capsys.readouterr()
    assert main(["eval", str(out), "--glyph-reference", "200", "--json", str(tmp_path / "r.json"),
                 "--no-progress"]) == 0
    assert "glyph check on 49 samples at 32 px" in capsys.readouterr().out
    result = json.loads((tmp_path / "r.json").read_text())
    assert set(result) == {"glyphs"}
    r = result["glyphs"]
    assert r["n"] == NUM_CLASSES and r["n_reference"] == NUM_CLASSES and 0 <= r["accuracy"] <= 1
    # 40 steps make blobs, not glyphs: far from real renders.
    assert r["fd"] > 3 * r["fd_real_halves"]
