"""gladiff convert: state dicts with the official DiG / DiT names and shapes (built here, nothing is
downloaded) become model folders whose networks compute the authors' function, checked against the
restatements of the authors' forward passes in ``official_reference.py``."""
from __future__ import annotations

import argparse

import pytest
import safetensors.torch as st
import torch

import gladiff
from gladiff.cli import main
from gladiff.errors import UsageError
from gladiff.hub import WEIGHTS_NAME, convert_official, read_config
from gladiff.hub.official import infer_options, to_gladiff_names
from tests.hub import official_reference as ref

# A tiny latent model: 8x8x4 input, patch 2 -> a 4x4 grid (16 tokens), 6 classes, learned sigma.
P, C, K, GRID = 2, 4, 6, 4


def _inputs(seed=0, n=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, C, GRID * P, GRID * P, generator=g)
    return x, torch.tensor([0.0, 421.0, 999.0][:n]), torch.tensor([0, 5, K][:n])  # K: the null class


def _save(path, obj):
    torch.save(obj, path)
    return path


def _record(model_sd, ema_sd, name):
    """The training record both official train.py scripts write."""
    return {"model": model_sd, "ema": ema_sd, "opt": {"state": {}, "param_groups": [{"lr": 1e-4}]},
            "args": argparse.Namespace(model=name, image_size=64, num_classes=K, vae="ema")}


def _converted_output(folder, x, t, y):
    pipe = gladiff.from_pretrained(folder)
    with torch.no_grad():
        return pipe, pipe.model(x, t, y)


def test_dit_plain_state_dict_converts_to_the_same_function(tmp_path):
    sd = ref.random_state(ref.dit_state_shapes(64, 3, P, C, K, GRID * GRID), seed=1)
    ckpt = _save(tmp_path / "DiT-tiny.pt", sd)
    convert_official("dit-official", ckpt, tmp_path / "m", num_heads=4)
    x, t, y = _inputs()
    pipe, out = _converted_output(tmp_path / "m", x, t, y)
    expected = ref.dit_forward(sd, x, t, y, heads=4, patch=P)
    assert expected.shape == (3, 2 * C, GRID * P, GRID * P) and expected.abs().mean() > 0.1
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    config = read_config(tmp_path / "m")
    assert config["model"]["options"] | {} == pipe.model.config()
    assert (config["model"]["name"], config["model"]["options"]["num_heads"]) == ("DiT-custom/2", 4)
    assert config["source"]["weights"] == "as released" and len(config["source"]["checkpoint_sha256"]) == 64
    assert config["data"] | {} == {"image_size": 64, "sample_size": 8, "in_channels": 4, "num_classes": K,
                                   "is_latent": True, "vae": "stabilityai/sd-vae-ft-ema",
                                   "classes": [str(i) for i in range(K)]}
    assert config["objective"]["name"] == "ddpm" and config["objective"]["options"]["learn_sigma"] is True
    # The round trip: every official tensor is in the folder, unchanged, under its gladiff name.
    saved = st.load_file(str(tmp_path / "m" / WEIGHTS_NAME))
    renamed = {k.replace("x_embedder.proj.", "x_embedder."): v for k, v in sd.items()}
    assert saved.keys() == renamed.keys() and all(torch.equal(saved[k], renamed[k]) for k in saved)
    assert "guided_channels=3" in (tmp_path / "m" / "README.md").read_text()


@pytest.mark.parametrize("weights", ["ema", "model"])
def test_dit_training_record_gives_ema_or_raw_and_heads_from_args(tmp_path, weights):
    shapes = ref.dit_state_shapes(48, 2, P, C, K, GRID * GRID, mlp_ratio=2.0)
    raw, ema = ref.random_state(shapes, seed=2), ref.random_state(shapes, seed=3)
    ckpt = _save(tmp_path / "0400000.pt", _record(raw, ema, "DiT-S/2"))  # S: 6 heads
    assert main(["convert", "--from", "dit-official", str(ckpt), str(tmp_path / "m"), "--weights", weights]) == 0
    x, t, y = _inputs(1)
    _, out = _converted_output(tmp_path / "m", x, t, y)
    sd = ema if weights == "ema" else raw
    torch.testing.assert_close(out, ref.dit_forward(sd, x, t, y, heads=6, patch=P), rtol=1e-4, atol=1e-5)
    config = read_config(tmp_path / "m")
    assert config["source"]["weights"] == weights and config["source"]["official_model"] == "DiT-S/2"
    assert config["model"]["options"]["mlp_ratio"] == 2.0 and config["model"]["options"]["num_heads"] == 6


@pytest.mark.parametrize("official_name,quad_dir,schedule", [
    ("DiG-S/2-bid-layer-dwconv-qdir", True, "srem"),   # the released design: four directions
    ("DiG-S/2-bid-layer-dwconv", False, "flip"),       # the ablation: flip after every block
])
def test_dig_record_converts_to_the_same_function(tmp_path, official_name, quad_dir, schedule):
    shapes = ref.dig_state_shapes(32, 4, 2, P, C, K, GRID * GRID)
    raw, ema = ref.random_state(shapes, seed=4), ref.random_state(shapes, seed=5)
    ckpt = _save(tmp_path / "dig.pt", _record(raw, ema, official_name))
    convert_official("dig-official", ckpt, tmp_path / "m")
    x, t, y = _inputs(2)
    pipe, out = _converted_output(tmp_path / "m", x, t, y)
    expected = ref.dig_forward(ema, x, t, y, heads=2, patch=P, quad_dir=quad_dir)
    assert expected.abs().mean() > 0.1
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    assert pipe.model.scan_schedule == schedule and pipe.model.num_heads == 2
    other = ref.dig_forward(ema, x, t, y, heads=2, patch=P, quad_dir=not quad_dir)
    assert (out - other).abs().max() > 1e-2  # the reference tells the schedules apart
    saved = st.load_file(str(tmp_path / "m" / WEIGHTS_NAME))
    assert len(saved) == len(ema)
    assert torch.equal(saved["blocks.3.dwconv.weight"], ema["blocks.3.dw_conv.weight"])
    assert torch.equal(saved["blocks.1.attn.g_norm_weight"], ema["blocks.1.attn.g_norm_swish_gate.weight"])


def test_dig_plain_state_dict_with_prefixes_and_the_unfused_norm_name(tmp_path):
    """DDP's module. and torch.compile's _orig_mod. prefixes go, the unfused g_norm name maps too; a
    plain state dict defaults to SREM."""
    shapes = ref.dig_state_shapes(32, 4, 2, P, C, K, GRID * GRID)
    sd = ref.random_state(shapes, seed=6)
    stored = {("module._orig_mod." + k).replace("g_norm_swish_gate", "g_norm"): v for k, v in sd.items()}
    convert_official("dig-official", _save(tmp_path / "d.pt", stored), tmp_path / "m")
    x, t, y = _inputs(3)
    _, out = _converted_output(tmp_path / "m", x, t, y)
    torch.testing.assert_close(out, ref.dig_forward(sd, x, t, y, heads=2, patch=P), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family,shapes,name,heads", [
    ("dit-official", ref.dit_state_shapes(1152, 28, 2, 4, 1000, 256), "DiT-XL/2", 16),  # DiT-XL-2-256x256.pt
    ("dit-official", ref.dit_state_shapes(1152, 28, 2, 4, 1000, 1024), "DiT-XL/2", 16),  # DiT-XL-2-512x512.pt
    ("dig-official", ref.dig_state_shapes(1152, 28, 18, 2, 4, 1000, 256), "DiG-XL/2", 18),
    ("dig-official", ref.dig_state_shapes(384, 12, 6, 2, 4, 1000, 256), "DiG-S/2", 6),
])
def test_released_sizes_are_inferred_from_shapes(family, shapes, name, heads):
    """The released checkpoints' layouts (shapes only, on the meta device) give the zoo models."""
    state = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
    fam, got, options = infer_options(family, to_gladiff_names(family, state))
    assert got == name and options["num_heads"] == heads and options["learn_sigma"] is True
    assert options["num_classes"] == 1000 and options["input_size"] == round(shapes["pos_embed"][1] ** 0.5) * 2
    with torch.device("meta"):
        model = gladiff.create_model(name, **options)
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in to_gladiff_names(family, state).items()}


def test_authors_guidance_is_reproduced_with_guided_channels_3(tmp_path):
    """gladiff's sampler with guided_channels=3 walks the authors' trajectory (their forward_with_cfg
    driving an unguided sampler), and gladiff's default (every channel guided) does not."""
    sd = ref.random_state(ref.dit_state_shapes(64, 2, P, C, K, GRID * GRID), seed=7)
    convert_official("dit-official", _save(tmp_path / "d.pt", sd), tmp_path / "m", num_heads=4)
    sd = {k: v.double() for k, v in sd.items()}  # float64 throughout: the trajectories must agree to 1e-9
    y, scale, shape = torch.tensor([1, 4]), 3.0, (2, C, 8, 8)

    def authors(x, t, labels):  # what their sample.py runs on the doubled batch, first half kept
        both = ref.forward_with_cfg(lambda *a: ref.dit_forward(sd, *a, heads=4, patch=P), torch.cat([x, x]),
                                    torch.cat([t, t]), torch.cat([labels, torch.full_like(labels, K)]), scale)
        return both[: len(x)]

    f64 = dict(steps=6, seed=0, dtype=torch.float64)
    theirs = gladiff.from_pretrained(tmp_path / "m").objective
    ours3 = gladiff.from_pretrained(tmp_path / "m", objective_opts={"guided_channels": 3})
    default = gladiff.from_pretrained(tmp_path / "m")
    with torch.no_grad():
        expected = theirs.sample(authors, shape, y, **f64)
        got = ours3.objective.sample(ours3.model.double(), shape, y, cfg_scale=scale, **f64)
        all4 = default.objective.sample(default.model.double(), shape, y, cfg_scale=scale, **f64)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)
    assert (all4 - expected)[:, 3].abs().max() > 1e-2  # the fourth channel is where they differ


# ----------------------------------------------------------------------------- bad inputs
def _dig_sd(**extra):
    return {**ref.random_state(ref.dig_state_shapes(32, 4, 2, P, C, K, GRID * GRID), seed=8), **extra}


class NotAllowed:  # a pickled object whose loading would run this module's code
    pass


@pytest.mark.parametrize("case,kind,words", [
    ("missing", "dit-official", "does not exist"),
    ("folder", "dit-official", "does not exist (it is a folder)"),
    ("garbage", "dit-official", "cannot be read as a PyTorch checkpoint"),
    ("truncated", "dit-official", "cannot be read as a PyTorch checkpoint"),
    ("code", "dit-official", "asks to run code, which is refused"),
    ("DiT as DiG", "dig-official", "no blocks.0.attn.g_norm_weight: not a DiG state dict"),
    ("DiG as DiT", "dit-official", "no blocks.0.mlp.fc1.weight: not a DiT state dict"),
    ("skip", "dig-official", "U-Net-style long skips"),
    ("no ema", "dig-official", "has no 'ema' weights"),
    ("unknown heads", "dit-official", "pass --num-heads"),
    ("half the convs", "dig-official", "2 of 4 blocks have a depth-wise conv"),
    ("extra tensor", "dig-official", "1 unexpected parameters"),
])
def test_bad_checkpoints_are_one_clear_line(tmp_path, capsys, case, kind, words):
    path = tmp_path / "c.pt"
    dit_sd = ref.random_state(ref.dit_state_shapes(64, 2, P, C, K, GRID * GRID), seed=9)
    if case == "folder":
        path.mkdir()
    elif case == "garbage":
        path.write_bytes(b"not a checkpoint at all")
    elif case == "truncated":
        _save(path, dit_sd)
        path.write_bytes(path.read_bytes()[:2000])
    elif case == "code":
        _save(path, {"model": NotAllowed()})
    elif case in ("DiT as DiG", "unknown heads"):
        _save(path, dit_sd)
    elif case == "DiG as DiT":
        _save(path, _dig_sd())
    elif case == "skip":
        _save(path, _dig_sd(**{"blocks.3.skip_linear.weight": torch.zeros(32, 64)}))
    elif case == "no ema":
        _save(path, {"model": _dig_sd()})
    elif case == "half the convs":
        _save(path, {k: v for k, v in _dig_sd().items() if not k.startswith(("blocks.0.dw_conv", "blocks.1.dw_conv"))})
    elif case == "extra tensor":
        _save(path, _dig_sd(**{"blocks.0.attn.extra": torch.zeros(3)}))
    with pytest.raises((UsageError, FileNotFoundError)) as info:
        convert_official(kind, path, tmp_path / "out")
    assert words in str(info.value), str(info.value)
    assert main(["convert", "--from", kind, str(path), str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and words in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "out2").exists()
