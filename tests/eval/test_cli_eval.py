"""`gladiff eval`: digit and glyph samples run their built-in checks; the ADM path explains missing weights."""
import json

import numpy as np
import pytest

from gladiff.cli import main
from gladiff.data.digits import digits_split
from gladiff.data.glyphs import NUM_CLASSES, glyphs_arrays
from gladiff.eval.inception import ENV_VAR, WEIGHTS_FILE


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("GLADIFF_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(ENV_VAR, raising=False)


def test_digit_samples_get_the_digit_check(tmp_path, capsys):
    _, _, images, labels = digits_split(16)
    np.savez(tmp_path / "samples.npz", images[..., None], labels)  # ADM layout, one channel
    assert main(["eval", str(tmp_path / "samples.npz"), "--json", str(tmp_path / "out.json"),
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "classifier accuracy" in out and "real vs real" in out
    result = json.loads((tmp_path / "out.json").read_text())["digits"]
    assert result["n"] == len(labels) and result["accuracy"] >= 0.97
    assert result["fd"] < 1.5 * result["fd_real_halves"]


def test_grey_rgb_digits_are_detected(tmp_path, capsys):
    _, _, images, labels = digits_split(16)
    np.savez(tmp_path / "rgb.npz", np.repeat(images[:50, :, :, None], 3, axis=-1), labels[:50])
    assert main(["eval", str(tmp_path / "rgb.npz"), "--json", "-", "--no-progress"]) == 0
    assert '"accuracy"' in capsys.readouterr().out


def test_glyph_samples_get_the_glyph_check(tmp_path, capsys):
    images, labels = glyphs_arrays(200, 32, seed=2)
    np.savez(tmp_path / "glyphs.npz", images, labels)
    assert main(["eval", str(tmp_path / "glyphs.npz"), "--glyph-reference", "400", "--json",
                 str(tmp_path / "out.json"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "glyph check on 200 samples at 32 px" in out and "precision" in out and "real vs real" in out
    result = json.loads((tmp_path / "out.json").read_text())
    assert set(result) == {"glyphs"}
    r = result["glyphs"]
    assert r["n"] == 200 and r["accuracy"] >= 0.97 and r["fd"] < 1.5 * r["fd_real_halves"]
    # --glyphs forces the check on samples that would not be taken for glyphs (grey ones here).
    np.savez(tmp_path / "grey.npz", images[..., :1], labels)
    assert main(["eval", str(tmp_path / "grey.npz"), "--glyphs", "--glyph-reference", "400", "--json", "-",
                 "--no-progress"]) == 0
    assert '"glyphs"' in capsys.readouterr().out


@pytest.mark.parametrize("shape,labels", [
    ((4, 24, 24, 3), np.arange(4)),               # colour, but not a multiple of 16 px
    ((4, 32, 32, 3), np.arange(4) + NUM_CLASSES),  # labels beyond the glyph classes
    ((4, 32, 32, 3), None),                        # no labels
])
def test_samples_neither_digits_nor_glyphs_without_ref_are_refused(tmp_path, capsys, shape, labels):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, shape, dtype=np.uint8)] + ([] if labels is None else [labels])
    np.savez(tmp_path / "colour.npz", *arrays)
    assert main(["eval", str(tmp_path / "colour.npz")]) == 2
    err = capsys.readouterr().err
    assert "--ref" in err and "--glyphs" in err


def test_digits_and_glyphs_flags_exclude_each_other(tmp_path, capsys):
    np.savez(tmp_path / "s.npz", np.zeros((4, 16, 16, 3), np.uint8), np.arange(4))
    assert main(["eval", str(tmp_path / "s.npz"), "--digits", "--glyphs"]) == 2
    assert "exclude each other" in capsys.readouterr().err


def test_adm_metrics_without_weights_explain_the_file(tmp_path, capsys):
    np.savez(tmp_path / "s.npz", np.zeros((4, 8, 8, 3), np.uint8))
    np.savez(tmp_path / "r.npz", np.zeros((4, 8, 8, 3), np.uint8))
    assert main(["eval", str(tmp_path / "s.npz"), "--ref", str(tmp_path / "r.npz")]) == 2
    err = capsys.readouterr().err
    assert WEIGHTS_FILE in err and ENV_VAR in err and "--inception" in err
