"""`gladiff eval`: digit samples run the built-in check; the ADM path explains missing weights."""
import json

import numpy as np
import pytest

from gladiff.cli import main
from gladiff.data.digits import digits_split
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


def test_non_digit_samples_without_ref_are_refused(tmp_path, capsys):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "colour.npz", rng.integers(0, 256, (4, 16, 16, 3), dtype=np.uint8), np.arange(4))
    assert main(["eval", str(tmp_path / "colour.npz")]) == 2
    assert "--ref" in capsys.readouterr().err


def test_adm_metrics_without_weights_explain_the_file(tmp_path, capsys):
    np.savez(tmp_path / "s.npz", np.zeros((4, 8, 8, 3), np.uint8))
    np.savez(tmp_path / "r.npz", np.zeros((4, 8, 8, 3), np.uint8))
    assert main(["eval", str(tmp_path / "s.npz"), "--ref", str(tmp_path / "r.npz")]) == 2
    err = capsys.readouterr().err
    assert WEIGHTS_FILE in err and ENV_VAR in err and "--inception" in err
