"""Model folders (model.safetensors + config.json + README.md): save/export and load round trips, the
Hub side with a mocked download, and every bad input as one clear error line."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import safetensors.torch as st
import torch

import gladiff
from gladiff.cli import main
from gladiff.diffusion import create_objective
from gladiff.errors import StorageError, UsageError
from gladiff.hub import CONFIG_NAME, WEIGHTS_NAME, export_run, push_to_hub, read_config
from gladiff.sample import read_npz
from gladiff.train import checkpoint as ckpt

TINY = dict(input_size=8, in_channels=3, num_classes=5, depth=2, hidden_size=32, num_heads=2)


def _randomized(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def _inputs(model, n=3):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, model.in_channels, *model.input_size, generator=g)
    return x, torch.tensor([3.0, 500.0, 999.0][:n]), torch.arange(n) % model.num_classes


@pytest.mark.parametrize("name,options,objective", [
    ("DiG-S/2", dict(scan_schedule="flip", dwconv_init="random", learn_sigma=True), create_objective(
        "ddpm", num_timesteps=100, beta_schedule="cosine", guided_channels=3, default_steps=20)),
    ("DiT-B/4", dict(mlp_ratio=2.0, class_dropout_prob=0.0, learn_sigma=False), create_objective(
        "flow", time_scale=500.0, default_sampler="euler", default_steps=7)),
])
def test_save_pretrained_round_trip(tmp_path, name, options, objective):
    """The folder rebuilds the same function (every option, not the zoo defaults), the same objective
    and the data facts; the config says everything the issue lists."""
    model = _randomized(gladiff.create_model(name, **{**TINY, **options}))
    data = {"is_latent": True, "vae": "stabilityai/sd-vae-ft-ema", "image_size": 64,
            "classes": ["a", "b", "c", "d", "e"]}
    model.save_pretrained(tmp_path / "m", objective=objective, data=data)
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["README.md", CONFIG_NAME, WEIGHTS_NAME]
    umask = os.umask(0)
    os.umask(umask)
    for f in (tmp_path / "m").iterdir():  # files to share: the umask's, not safetensors' private 0600
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f.name
    pipe = gladiff.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        torch.testing.assert_close(pipe.model(*_inputs(model)), model(*_inputs(model)), rtol=0, atol=0)
    assert type(pipe.objective) is type(objective) and pipe.objective.options() == objective.options()
    config = json.loads((tmp_path / "m" / CONFIG_NAME).read_text())
    assert config["model"]["name"] == name and config["model"]["options"] == model.config()
    for key, value in options.items():
        assert config["model"]["options"][key] == value
    assert config["null_class"] == model.null_label == (None if options.get("class_dropout_prob") == 0.0 else 5)
    assert config["data"] == {"image_size": 64, "sample_size": 8, "in_channels": 3, "num_classes": 5,
                              "is_latent": True, "vae": "stabilityai/sd-vae-ft-ema", "classes": list("abcde")}
    assert config["objective"] == {"name": objective.name, "options": objective.options()}
    assert pipe.sample_shape == (3, 8, 8) and pipe.info["vae"] == "stabilityai/sd-vae-ft-ema"
    card = (tmp_path / "m" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: gladiff") and name in card and "from_pretrained" in card


def test_export_writes_the_ema_weights_config_and_card(tiny_run, tmp_path):
    state = ckpt.read_checkpoint(ckpt.checkpoint_path(tiny_run, 4))
    assert main(["export", str(tiny_run), str(tmp_path / "ema")]) == 0
    assert main(["export", str(ckpt.checkpoint_path(tiny_run, 4)), str(tmp_path / "raw"), "--raw-weights"]) == 0
    ema = st.load_file(str(tmp_path / "ema" / WEIGHTS_NAME))
    raw = st.load_file(str(tmp_path / "raw" / WEIGHTS_NAME))
    assert ema.keys() == state["ema"].keys()
    assert all(torch.equal(ema[k], state["ema"][k]) and torch.equal(raw[k], state["model"][k]) for k in ema)
    assert not torch.equal(ema["final_layer.linear.weight"], raw["final_layer.linear.weight"])
    config = read_config(tmp_path / "ema")
    assert config["source"] == {"kind": "gladiff-run", "checkpoint": "step-00000004.pt", "step": 4, "weights": "ema"}
    assert config["objective"]["name"] == "flow" and config["data"]["classes"] == [str(i) for i in range(10)]
    assert config["model"]["options"]["hidden_size"] == 32 and config["null_class"] == 10
    card = (tmp_path / "ema" / "README.md").read_text()
    assert "Trained for 4 steps" in card and "| score.json | fd | 321.5 |" in card  # the run's evaluation
    assert "global_batch_size: 8" in card and "run_dir" not in card  # the training config, no local path
    assert "Last logged values (step 4): loss" in card


def test_sample_and_eval_take_an_exported_folder_like_the_run(tiny_run, tmp_path, capsys):
    """The same seed gives the same samples from the run folder and from its export, through the
    CLI; eval's digit check takes either and reads the same numbers."""
    export_run(tiny_run, tmp_path / "m")
    args = ["--per-class", "1", "--classes", "2,5", "--steps", "3", "--sampler", "euler", "--cfg-scale", "1.5",
            "--device", "cpu", "--no-progress"]
    assert main(["sample", str(tiny_run), "--out", str(tmp_path / "a.npz"), *args]) == 0
    assert main(["sample", str(tmp_path / "m"), "--out", str(tmp_path / "b.npz"), *args]) == 0
    (a, la), (b, lb) = read_npz(tmp_path / "a.npz"), read_npz(tmp_path / "b.npz")
    assert a.shape == (2, 16, 16, 1) and np.array_equal(a, b) and la.tolist() == lb.tolist() == [2, 5]
    scores = []
    for model in (tiny_run, tmp_path / "m"):
        assert main(["eval", str(model), "--per-class", "2", "--steps", "2", "--sampler", "euler",
                     "--json", "-", "--no-progress"]) == 0
        out = capsys.readouterr().out
        scores.append(json.loads(out[out.index("{"):])["digits"])
    assert scores[0] == scores[1] and scores[0]["n"] == 20


def test_hub_id_downloads_the_three_files_through_huggingface_hub(tiny_run, tmp_path, monkeypatch):
    import huggingface_hub

    export_run(tiny_run, tmp_path / "m")
    calls = []

    def fake_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        return str(tmp_path / "m")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    monkeypatch.chdir(tmp_path)  # "someone" is no local folder here
    pipe = gladiff.from_pretrained("someone/tiny-dig", revision="v1")
    assert calls[0][0] == "someone/tiny-dig" and calls[0][1]["revision"] == "v1"
    assert sorted(calls[0][1]["allow_patterns"]) == ["README.md", CONFIG_NAME, WEIGHTS_NAME]
    assert pipe.config["source"]["step"] == 4
    assert main(["sample", "someone/tiny-dig", "--out", "x.npz", "--num-samples", "2", "--steps", "1",
                 "--sampler", "euler", "--no-progress", "--device", "cpu"]) == 0
    assert len(calls) == 2 and read_npz(tmp_path / "x.npz")[0].shape == (2, 16, 16, 1)


def test_local_folders_never_touch_the_network(tiny_run, tmp_path):
    """The autouse fixture makes any download fail the test: local loads must not try one, and a
    path under an existing folder is never taken for a Hub id."""
    export_run(tiny_run, tmp_path / "m")
    gladiff.from_pretrained(str(tmp_path / "m"))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        gladiff.from_pretrained(str(tmp_path / "nothing"))


def test_failed_download_is_one_line(tmp_path, monkeypatch, capsys):
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(repo_id, **kwargs):
        raise LocalEntryNotFoundError("Cannot find the requested files in the disk cache and outgoing traffic "
                                      "has been disabled.\nTo enable hf.co look-ups, set HF_HUB_OFFLINE=0.")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    monkeypatch.chdir(tmp_path)
    assert main(["sample", "someone/missing", "--out", "x.npz"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "someone/missing is not a local folder" in err and "cannot be reached" in err


def test_push_to_hub_uploads_the_folder(tiny_run, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    calls = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kw):
            calls.append(("create", repo_id, kw))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, **kw):
            calls.append(("upload", kw["repo_id"], kw))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert main(["export", str(tiny_run), str(tmp_path / "m"), "--push-to-hub", "me/tiny", "--private"]) == 0
    assert calls[0][:2] == ("create", "me/tiny") and calls[0][2]["private"] is True
    assert calls[1][2]["folder_path"] == str(tmp_path / "m")
    assert sorted(calls[1][2]["allow_patterns"]) == ["README.md", CONFIG_NAME, WEIGHTS_NAME]
    assert "uploaded to https://huggingface.co/me/tiny" in capsys.readouterr().out
    with pytest.raises(UsageError, match="owner/name"):
        push_to_hub(tmp_path / "m", "not an id")


# ----------------------------------------------------------------------------- bad inputs
def _broken(folder, how):
    """Damage an exported folder in one way."""
    cfg_path = folder / CONFIG_NAME
    config = json.loads(cfg_path.read_text())
    if how == "truncated":
        data = (folder / WEIGHTS_NAME).read_bytes()
        (folder / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
        config.pop("weights_sha256")  # the safetensors header alone catches it
    elif how == "flipped byte":
        data = bytearray((folder / WEIGHTS_NAME).read_bytes())
        data[-5] ^= 0x40
        (folder / WEIGHTS_NAME).write_bytes(bytes(data))
    elif how == "not safetensors":
        torch.save({"a": torch.zeros(1)}, folder / WEIGHTS_NAME)
        config.pop("weights_sha256")
    elif how == "no weights":
        (folder / WEIGHTS_NAME).unlink()
    elif how == "wider model":
        config["model"]["options"]["hidden_size"] = 64
    elif how == "extra tensor":
        state = st.load_file(str(folder / WEIGHTS_NAME))
        st.save_file({**state, "blocks.9.attn.q_proj.weight": torch.zeros(2, 2)}, str(folder / WEIGHTS_NAME))
        config.pop("weights_sha256")
    elif how == "channels disagree":
        config["data"]["in_channels"] = 3
    elif how == "objective disagrees":
        config["objective"] = {"name": "ddpm", "options": {}}
    elif how == "unknown option":
        config["model"]["options"]["dropout"] = 0.1
    elif how == "objective option":
        config["objective"]["options"]["steps"] = 20
    elif how == "foreign config":
        config = {"_class_name": "AutoencoderKL", "in_channels": 3}
    elif how == "not json":
        cfg_path.write_text("{model: DiG")
        return
    cfg_path.write_text(json.dumps(config))


@pytest.mark.parametrize("how,error,words", [
    ("truncated", StorageError, ["truncated or not a safetensors file", "incomplete metadata"]),
    ("flipped byte", StorageError, ["is damaged", "SHA-256"]),
    ("not safetensors", StorageError, ["not a safetensors file"]),
    ("no weights", StorageError, ["model.safetensors is missing"]),
    ("wider model", UsageError, ["model.safetensors does not match its config.json", "shape mismatches",
                                 "describes DiG-S/4 (depth=2, hidden_size=64", "weights (32,) vs model (64,)"]),
    ("extra tensor", UsageError, ["does not match its config.json", "1 unexpected parameters",
                                  "blocks.9.attn.q_proj.weight"]),
    ("channels disagree", UsageError, ["data in_channels 3 disagrees with the model's 1"]),
    ("objective disagrees", UsageError, ["learn_sigma True disagrees with the model's False"]),
    ("unknown option", UsageError, ["do not build a DiG", "dropout"]),
    ("objective option", UsageError, ["its objective does not build", "unknown option(s) steps"]),
    ("foreign config", UsageError, ["was not written by gladiff"]),
    ("not json", UsageError, ["is not valid JSON"]),
])
def test_damaged_or_mismatched_folders_are_one_clear_line(tiny_run, tmp_path, capsys, how, error, words):
    export_run(tiny_run, tmp_path / "m")
    _broken(tmp_path / "m", how)
    with pytest.raises(error) as info:
        gladiff.from_pretrained(tmp_path / "m")
    for w in words:
        assert w in str(info.value), (w, str(info.value))
    assert main(["sample", str(tmp_path / "m"), "--out", str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("gladiff sample: error: ") and words[0] in err


@pytest.mark.parametrize("what,words", [
    ("missing", "model folder {p} does not exist"),
    ("file", "{p} is a file; give a model folder"),
    ("run folder", "{p} is a training run folder, not a model folder; export it with gladiff export"),
    ("empty folder", "{p} has no config.json: not a model folder"),
])
def test_wrong_folders_are_named(tiny_run, tmp_path, what, words):
    p = {"missing": tmp_path / "none", "file": tmp_path / "f.txt", "run folder": tiny_run,
         "empty folder": tmp_path / "empty"}[what]
    if what == "file":
        p.write_text("x")
    if what == "empty folder":
        p.mkdir()
    with pytest.raises((UsageError, FileNotFoundError)) as info:
        gladiff.from_pretrained(p)
    assert words.format(p=p) in str(info.value)


def test_export_refuses_bad_outputs_and_raw_weights_of_a_folder(tiny_run, tmp_path, capsys):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    for out, words in [(tiny_run, "is a run folder"), (tmp_path / "busy", "is not empty (notes.txt)")]:
        assert main(["export", str(tiny_run), str(out)]) == 2
        assert words in capsys.readouterr().err
    assert main(["export", str(tmp_path / "none"), str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["export", str(tiny_run), str(tmp_path / "m")]) == 0
    assert main(["export", str(tiny_run), str(tmp_path / "m")]) == 0  # an earlier export is replaced
    capsys.readouterr()
    assert main(["sample", str(tmp_path / "m"), "--raw-weights", "--out", str(tmp_path / "x.npz")]) == 2
    assert "holds one set of weights" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "m")


def test_sample_a_folder_with_the_fast_samplers_and_an_unknown_one(tiny_run, tmp_path, capsys):
    """The issue's path: an exported flow model sampled with dpm++2m; a DDPM model folder with the
    diffusers samplers; an unknown sampler is one line naming the valid ones, before any sampling."""
    export_run(tiny_run, tmp_path / "flow")
    ddpm = _randomized(gladiff.create_model("DiT-S/2", **TINY))
    ddpm.save_pretrained(tmp_path / "ddpm", objective="ddpm")
    common = ["--num-samples", "3", "--device", "cpu", "--no-progress", "--cfg-scale", "2"]
    for folder, sampler in [("flow", "dpm++2m"), ("flow", "midpoint"), ("ddpm", "dpm++2m"), ("ddpm", "dpm++2m-sde"),
                            ("ddpm", "unipc")]:
        out = tmp_path / f"{folder}-{sampler}.npz"
        assert main(["sample", str(tmp_path / folder), "--sampler", sampler, "--steps", "4", "--out", str(out),
                     *common]) == 0
        images, _ = read_npz(out)
        assert images.shape == ((3, 16, 16, 1) if folder == "flow" else (3, 8, 8, 3)), sampler
    capsys.readouterr()
    assert main(["sample", str(tmp_path / "flow"), "--sampler", "dpm++3m", "--out", str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown sampler 'dpm++3m' for objective 'flow'; valid: euler, heun, " \
                                   "midpoint, dpm++2m, dopri5" in err
    assert main(["eval", str(tmp_path / "flow"), "--sampler", "unipc"]) == 2
    assert "unknown sampler 'unipc' for objective 'flow'" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()
