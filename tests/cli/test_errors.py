"""Everyday mistakes end a command with one line that says what is wrong and what to do, exit
status 2, and no traceback unless asked for (--debug, GLADIFF_DEBUG=1); what can be checked is
checked before the long work starts (issue 16, items 5, 6, 8)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gladiff.cli import build_parser, main
from gladiff.errors import GladiffError, StorageError, UsageError

TINY = ["--model", "DiG-S/4", "--model-opt", "depth=1", "--model-opt", "hidden_size=32",
        "--model-opt", "num_heads=1", "--global-batch-size", "4", "--device", "cpu", "--no-tensorboard"]


def one_error_line(capsys, *words) -> str:
    """The error the command printed: one line `gladiff CMD: error: ...` ending stderr (progress bars
    may precede it), no traceback, holding every one of ``words``."""
    err = capsys.readouterr().err
    line = err.rstrip("\n").split("\n")[-1]
    assert err.count(": error: ") == 1 and line.startswith("gladiff ") and "Traceback" not in err, err
    for w in words:
        assert w in line, (w, line)
    return line


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder nobody may write into: a chmod-ed folder, or (root ignores permissions) a sysfs folder."""
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o555)
    try:
        (d / "probe").touch()
    except PermissionError:
        yield d
        d.chmod(0o755)
        return
    (d / "probe").unlink()
    d.chmod(0o755)
    sysfs = Path("/sys/kernel")
    try:
        (sysfs / ".gladiff-probe").touch()
    except OSError:
        yield sysfs
        return
    pytest.skip("no folder here refuses writes (running as root without a read-only sysfs)")


@pytest.fixture
def no_training(monkeypatch):
    """Fails the test if training gets as far as building its dataset."""
    from gladiff.train import loop

    def fail(*args, **kwargs):
        raise AssertionError("training started before the check")

    monkeypatch.setattr(loop, "build_dataset", fail)


# ----------------------------------------------------------------------------- the top level
def test_debug_flag_and_variable_show_the_traceback(monkeypatch, capsys):
    argv = ["models", "--latent-factor", "0"]
    assert main(argv) == 2
    one_error_line(capsys, "gladiff models: error: --latent-factor must be >= 1, got 0")
    for debug_argv in (argv + ["--debug"], ["--debug"] + argv):
        with pytest.raises(UsageError, match="--latent-factor"):
            main(debug_argv)
    monkeypatch.setenv("GLADIFF_DEBUG", "1")
    with pytest.raises(UsageError):
        main(argv)
    monkeypatch.setenv("GLADIFF_DEBUG", "0")
    assert main(argv) == 2


def test_bare_system_errors_are_one_line_that_points_to_debug(tmp_path, capsys, monkeypatch):
    from gladiff.cli import models

    def raise_os_error(args):
        raise PermissionError(13, "Permission denied", str(tmp_path / "x"))

    monkeypatch.setattr(models, "run", raise_os_error)
    assert main(["models"]) == 2
    one_error_line(capsys, f"{tmp_path / 'x'}: Permission denied", "--debug")


def test_error_types_are_the_builtin_ones_callers_catch():
    assert issubclass(UsageError, ValueError) and issubclass(StorageError, OSError)
    assert issubclass(UsageError, GladiffError) and issubclass(StorageError, GladiffError)


# ----------------------------------------------------------------------------- train (items 5, 6)
@pytest.mark.parametrize("text,words", [
    ("steps: 5.7\n", "steps must be an integer, got 5.7"),
    ('resume: "no"\n', "resume must be true or false, got 'no'"),
    ("learning_rate: 1e-4\n", "did you mean 'lr'"),
])
def test_train_config_values_are_checked_before_training(tmp_path, capsys, no_training, text, words):
    (tmp_path / "c.yaml").write_text(text)
    assert main(["train", "--config", str(tmp_path / "c.yaml"), "--run-dir", str(tmp_path / "run")]) == 2
    one_error_line(capsys, "gladiff train: error:", "c.yaml", words)
    assert not (tmp_path / "run").exists()


def test_train_into_a_file_or_a_read_only_folder_fails_before_training(tmp_path, capsys, no_training,
                                                                      read_only_dir):
    (tmp_path / "file").write_text("x")
    assert main(["train", "--run-dir", str(tmp_path / "file"), *TINY]) == 2
    one_error_line(capsys, f"run folder {tmp_path / 'file'}", "is a file, not a folder")
    assert main(["train", "--run-dir", str(tmp_path / "file" / "run"), *TINY]) == 2
    one_error_line(capsys, "is a file, not a folder")
    assert main(["train", "--run-dir", str(read_only_dir), *TINY]) == 2
    one_error_line(capsys, f"cannot write into run folder {read_only_dir}", "choose another folder")
    assert main(["train", "--run-dir", str(read_only_dir / "new" / "run"), *TINY]) == 2
    one_error_line(capsys, "cannot write into run folder", f"(in {read_only_dir}, where it would be created)")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full to fill a disk")
def test_full_disk_while_saving_a_checkpoint(tmp_path, capsys, monkeypatch):
    """torch.save into a full disk raises RuntimeError('... unexpected pos ...'): a line that says the
    disk is full and how to continue."""
    real_save = torch.save

    def save_to_full_disk(obj, f, *args, **kwargs):
        with open("/dev/full", "wb") as full:
            real_save(obj, full, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_to_full_disk)
    assert main(["train", "--run-dir", str(tmp_path / "run"), "--steps", "1", *TINY]) == 2
    one_error_line(capsys, "could not write the checkpoint of step 1", "the disk is full", "--resume")
    assert not list((tmp_path / "run" / "checkpoints").iterdir())  # no half-written file left


# ----------------------------------------------------------------------------- sample (item 6)
@pytest.mark.parametrize("out,words", [
    ("samples.jpg", "must end in .npz or .png"),
    ("folder.npz", "is a folder; give a file path"),
    ("file/samples.npz", "is a file, not a folder"),
])
def test_sample_outputs_are_checked_before_the_checkpoint_is_read(tmp_path, capsys, out, words):
    (tmp_path / "folder.npz").mkdir()
    (tmp_path / "file").write_text("x")
    # The checkpoint does not exist either: the output is checked first, before anything is loaded.
    assert main(["sample", str(tmp_path / "no-run"), "--out", str(tmp_path / out)]) == 2
    one_error_line(capsys, "gladiff sample: error:", words)


@pytest.mark.parametrize("argv,words", [(["--batch-size", "0"], "--batch-size must be > 0"),
                                        (["--num-samples", "0"], "--num-samples must be > 0"),
                                        (["--classes", "3,x"], "--classes must be comma-separated")])
def test_sample_numbers_are_checked_first(tmp_path, capsys, argv, words):
    assert main(["sample", str(tmp_path / "no-run"), "--out", str(tmp_path / "s.npz"), *argv]) == 2
    one_error_line(capsys, words)


# ----------------------------------------------------------------------------- eval (item 6)
def test_eval_json_into_a_folder_and_batch_size_zero_fail_before_scoring(tmp_path, capsys):
    from gladiff.data.digits import digits_split

    _, _, images, labels = digits_split(16)
    np.savez(tmp_path / "s.npz", images[:20, ..., None], labels[:20])
    assert main(["eval", str(tmp_path / "s.npz"), "--json", str(tmp_path), "--no-progress"]) == 2
    line = one_error_line(capsys, f"--json file {tmp_path} is a folder", str(tmp_path / "results.json"))
    assert "classifier" not in line  # nothing was scored
    assert main(["eval", str(tmp_path / "s.npz"), "--batch-size", "0"]) == 2
    one_error_line(capsys, "--batch-size must be > 0, got 0")


def test_eval_with_a_garbage_inception_file(tmp_path, capsys):
    np.savez(tmp_path / "s.npz", np.zeros((4, 8, 8, 3), np.uint8))
    (tmp_path / "inception.pth").write_bytes(np.random.default_rng(0).bytes(2000))
    assert main(["eval", str(tmp_path / "s.npz"), "--ref", str(tmp_path / "s.npz"),
                 "--inception", str(tmp_path / "inception.pth"), "--no-progress"]) == 2
    line = one_error_line(capsys, "inception.pth", "is not a PyTorch state dict",
                          "pt_inception-2015-12-05-6726825d.pth")
    assert "weights_only" not in line  # torch's advice to unpickle the file anyway is not repeated


def test_corrupt_image_in_a_reference_folder_is_named(tmp_path):
    from PIL import Image

    from gladiff.eval.adm import ImageSource, evaluate

    ref = tmp_path / "ref"
    ref.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(ref / f"{i}.png")
    (ref / "1.png").write_bytes(b"not an image")

    def features(batches, desc):  # any extractor reads every image; this one just counts
        n = sum(len(b) for b in batches)
        return {"pool": np.zeros((n, 2)), "spatial": np.zeros((n, 2)), "logits": np.zeros((n, 3))}

    with pytest.raises(ValueError, match=r"cannot read image .*1\.png .*replace or remove it"):
        evaluate(np.zeros((4, 8, 8, 3), np.uint8), ref, extractor=features, extractor_id="count",
                 cache_dir=tmp_path / "cache")
    (ref / "0.png").write_bytes(b"")  # the first image is opened when the folder is listed
    with pytest.raises(ValueError, match=r"cannot read image .*0\.png"):
        ImageSource(ref)


# ----------------------------------------------------------------------------- models, bench (items 6, 8)
@pytest.mark.parametrize("argv,words", [
    (["--latent-factor", "0"], "--latent-factor must be >= 1, got 0"),
    (["--num-classes", "0"], "--num-classes must be >= 1, got 0"),
    (["--image-size", "24", "--filter", "/8"], "no model can be built for these settings: DiG-S/8"),
])
def test_models_errors_exit_non_zero_with_one_line(capsys, argv, words):
    assert main(["models", *argv]) == 2
    one_error_line(capsys, "gladiff models: error:", words)


# ----------------------------------------------------------------------------- optional packages (item 6)
def test_vae_without_diffusers_is_one_line_naming_the_package(tmp_path, capsys, monkeypatch):
    from PIL import Image

    from gladiff.data.latents import save_latents

    (tmp_path / "images" / "cat").mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(tmp_path / "images" / "cat" / "a.png")
    save_latents(tmp_path / "lat", np.zeros((4, 4, 4, 4), np.float32), np.arange(4) % 2, classes=["a", "b"],
                 image_size=16, vae="some/vae")
    run = tmp_path / "run"
    assert main(["train", "--run-dir", str(run), "--data", f"latents:{tmp_path / 'lat'}", "--image-size", "16",
                 "--steps", "1", *TINY]) == 0
    capsys.readouterr()
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` now raises ImportError
    assert main(["extract-latents", "--data", str(tmp_path / "images"), "--out", str(tmp_path / "out"),
                 "--image-size", "16", "--vae", "some/vae", "--device", "cpu", "--workers", "0"]) == 2
    one_error_line(capsys, "gladiff extract-latents: error:", "needs diffusers", "pip install 'gladiff[vae]'")
    assert main(["sample", str(run), "--out", str(tmp_path / "s.png"), "--vae", "other/vae", "--device", "cpu",
                 "--num-samples", "1", "--steps", "1", "--no-progress"]) == 2
    one_error_line(capsys, "gladiff sample: error:", "'other/vae'", "needs diffusers", "pip install 'gladiff[vae]'")


# ----------------------------------------------------------------------------- help texts (item 8)
def _options():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name, p in sub.choices.items():
        for action in p._actions:
            if action.option_strings and action.dest != "help":
                yield name, action


def test_every_option_has_help_that_states_its_default_once():
    missing = [f"{cmd} {a.option_strings[0]}" for cmd, a in _options() if not a.help]
    assert not missing, missing  # e.g. `sample --seed`, `demo --run-dir` had none
    twice = [f"{cmd} {a.option_strings[0]}: {a.help}" for cmd, a in _options()
             if a.help and a.help.count("(default") > 1]
    assert not twice, twice  # e.g. `--random-flip ... (default: the dataset's own) (default: None)`
