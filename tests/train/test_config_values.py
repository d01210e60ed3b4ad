"""Every training config value is checked against its field's type, from YAML, flags or code:
values YAML reads differently from what was meant are errors naming the key, the value and the
type, not a silently different run (issue 16, item 5)."""
import pytest
import yaml

from gladiff.errors import UsageError
from gladiff.train.config import FIELDS, TrainConfig, resolve_config


def _from_yaml(tmp_path, text: str) -> TrainConfig:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return resolve_config(path)


@pytest.mark.parametrize("text,words", [
    # 5.7 steps ran 6 steps and exited 0
    ("steps: 5.7", r"c.yaml: steps must be an integer, got 5.7 \(a number\) \(write a whole number"),
    ("steps: 4e5", r"steps must be an integer, got '4e5' \(a string\) \(write a whole number"),
    ("steps: true", r"steps must be an integer, got True \(a boolean\)"),
    # a quoted "no" is a non-empty string: it counted as true
    ('resume: "no"', r"resume must be true or false, got 'no' \(a string\) \(write true or false, without quotes\)"),
    ("tensorboard: 1", r"tensorboard must be true or false, got 1 \(an integer\)"),
    ("lr: fast", r"lr must be a number, got 'fast' \(a string\)"),
    ("lr: .nan", r"lr must be a number, got nan"),
    ("lr: true", r"lr must be a number, got True \(a boolean\)"),
    ("model: 2", r"model must be a string, got 2 \(an integer\)"),
    ("model_opts: [1, 2]", r"model_opts must be a mapping of keys to values, got \[1, 2\] \(a list\)"),
    ("betas: [0.9]", r"betas must be a list of 2 numbers, got \[0.9\]"),
    ("betas: [0.9, x]", r"betas must be a list of 2 numbers"),
    ("random_flip: maybe", r"random_flip must be true or false or null, got 'maybe'"),
    ("sample_steps: 2.5", r"sample_steps must be an integer or a string or null, got 2.5"),
])
def test_values_of_the_wrong_type_name_key_value_and_type(tmp_path, text, words):
    with pytest.raises(UsageError, match=words):
        _from_yaml(tmp_path, text)


def test_yaml_1_1_float_strings_are_read_as_numbers(tmp_path):
    """PyYAML (YAML 1.1) reads `lr: 1e-4` as the string "1e-4" (it ended in a traceback); a float key
    takes a string that reads as a finite number, and an int for a float key becomes a float."""
    assert yaml.safe_load("lr: 1e-4")["lr"] == "1e-4"  # the premise
    cfg = _from_yaml(tmp_path, "lr: 1e-4\nweight_decay: 0\nbetas: ['9e-1', 0.95]\nema_decay: 1")
    assert cfg.lr == 1e-4 and isinstance(cfg.lr, float)
    assert cfg.weight_decay == 0.0 and isinstance(cfg.weight_decay, float)
    assert cfg.betas == (0.9, 0.95) and cfg.ema_decay == 1.0


def test_good_values_pass_unchanged(tmp_path):
    cfg = _from_yaml(tmp_path, "steps: 400_000\nresume: no\nrandom_flip: null\nsample_steps: ddim50\n"
                               "model_opts: {depth: 2}\ndevice: cuda:1")
    assert (cfg.steps, cfg.resume, cfg.random_flip, cfg.sample_steps) == (400_000, False, None, "ddim50")
    assert cfg.model_opts == {"depth": 2} and cfg.device == "cuda:1"


@pytest.mark.parametrize("key,near", [("learning_rate", "lr"), ("step", "steps"), ("ckpt_evry", "ckpt_every"),
                                      ("batch_size", "global_batch_size"), ("output_dir", "run_dir")])
def test_unknown_keys_suggest_the_nearest_known_key(tmp_path, key, near):
    with pytest.raises(UsageError, match=f"c.yaml: unknown training config key '{key}'; did you mean '{near}'"):
        _from_yaml(tmp_path, f"{key}: 1")


def test_unknown_key_without_a_near_one_lists_the_keys():
    with pytest.raises(UsageError, match="unknown training config key 'zzz'; known keys: run_dir, data"):
        resolve_config(overrides={"zzz": 1})


def test_code_built_configs_are_checked_too():
    """TrainConfig(...) directly (the API, and the config stored in checkpoints) goes through the same
    checks in validate(): a list of betas from a checkpoint is normalised, a float step count is not."""
    assert TrainConfig(betas=[0.5, 0.6]).validate().betas == (0.5, 0.6)
    with pytest.raises(UsageError, match="steps must be an integer, got 5.7"):
        TrainConfig(steps=5.7).validate()
    with pytest.raises(UsageError, match=r"betas must lie in \[0, 1\)"):
        TrainConfig(betas=(0.9, 1.5)).validate()


def test_every_field_has_a_checked_type():
    """A new field with an annotation check_value does not understand would accept anything."""
    from gladiff.train.config import _WORDS, _kinds

    for name in FIELDS:
        assert set(_kinds(name)) <= set(_WORDS), name


def test_yaml_syntax_errors_say_where(tmp_path):
    with pytest.raises(UsageError, match=r"c.yaml is not valid YAML: .* at line \d+, column \d+"):
        _from_yaml(tmp_path, "steps: 3\nlr: [1\n")
    (tmp_path / "folder.yaml").mkdir()
    with pytest.raises(UsageError, match="is a folder"):
        resolve_config(tmp_path / "folder.yaml")
