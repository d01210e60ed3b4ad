"""`gladiff sample --out DIR/`: one PNG per sample with its label in the name, beside the grid and the
.npz, and `gladiff eval DIR/` reads the labels back for the digit check."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from gladiff.cli import main
from gladiff.data.digits import digits_split
from gladiff.eval.adm import ImageSource
from gladiff.sample import read_npz, save_images


def test_save_images_writes_one_png_per_sample_that_reads_back(tmp_path):
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (12, 5, 7, 1), dtype=np.uint8)
    rgb = rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)
    labels = np.array([3, 0, 9, 11, 2, 2, 7, 1000, 5, 4, 8, 6])
    save_images(tmp_path / "g", grey, labels)
    save_images(tmp_path / "c", rgb, labels[:3])
    names = sorted(p.name for p in (tmp_path / "g").iterdir())
    assert names == [f"{i:06d}_class{label}.png" for i, label in enumerate(labels)]
    for i, name in enumerate(names):
        with Image.open(tmp_path / "g" / name) as im:
            assert im.mode == "L" and np.array_equal(np.asarray(im), grey[i, ..., 0])
    source = ImageSource(tmp_path / "g")
    assert np.array_equal(source.labels(), labels) and np.array_equal(source.load_all()[..., 0], grey[..., 0])
    assert np.array_equal(ImageSource(tmp_path / "c").load_all(), rgb)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    (tmp_path / "g" / "extra.png").write_bytes((tmp_path / "g" / names[0]).read_bytes())
    assert ImageSource(tmp_path / "g").labels() is None  # one file without a label: no labels at all


def test_sample_writes_the_folder_beside_grid_and_npz(trained_ckpt, tmp_path):
    outs = [str(tmp_path / "s.npz"), str(tmp_path / "grid.png"), str(tmp_path / "pngs") + "/"]
    argv = ["sample", str(trained_ckpt), "--per-class", "2", "--classes", "4,1,7", "--batch-size", "4",
            "--device", "cpu", "--no-progress", "--steps", "3"]
    assert main([*argv, *(a for o in outs for a in ("--out", o))]) == 0
    images, labels = read_npz(tmp_path / "s.npz")
    source = ImageSource(tmp_path / "pngs")
    assert len(source) == 6 and labels.tolist() == [4, 1, 7, 4, 1, 7]
    assert np.array_equal(source.labels(), labels)
    assert np.array_equal(source.load_all()[..., :1], images)  # the same pixels as the archive
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_eval_reads_the_labels_of_a_sample_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("GLADIFF_CACHE", str(tmp_path / "cache"))
    _, _, images, labels = digits_split(16)
    np.savez(tmp_path / "s.npz", images[:200, :, :, None], labels[:200])
    save_images(tmp_path / "pngs", images[:200, :, :, None], labels[:200])
    results = []
    for source in ("s.npz", "pngs"):
        assert main(["eval", str(tmp_path / source), "--json", "-", "--no-progress"]) == 0
        out = capsys.readouterr().out
        results.append(json.loads(out[out.index("{"):])["digits"])
    # (the folder's PNGs come back as three equal channels: the features agree to float rounding)
    assert results[0]["accuracy"] == results[1]["accuracy"] > 0.95 and results[0]["n"] == results[1]["n"] == 200
    assert abs(results[0]["fd"] - results[1]["fd"]) < 1e-5 * results[0]["fd"]


def test_a_sample_folder_must_be_new_or_empty_and_is_checked_first(tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "old.png").write_bytes(b"x")
    (tmp_path / "empty").mkdir()
    # the run does not exist: the outputs are checked before anything is loaded
    assert main(["sample", str(tmp_path / "no-run"), "--out", str(tmp_path / "full") + "/"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "output folder" in err and "is not empty" in err
    assert main(["sample", str(tmp_path / "no-run"), "--out", str(tmp_path / "empty") + "/"]) == 2
    assert "does not exist" in capsys.readouterr().err  # the empty folder passed; the run is what is missing
    assert main(["sample", str(tmp_path / "no-run"), "--out", str(tmp_path / "empty")]) == 2
    assert "is a folder; give a file path" in capsys.readouterr().err  # without the slash: a file was meant
