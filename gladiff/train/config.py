"""The training run's configuration: one flat dataclass, a YAML file, and flags on top.

Precedence, lowest first: the dataclass defaults, the YAML file (``--config``), the command-line
flags the user actually typed. The resolved result is written to ``<run_dir>/config.yaml`` so a run
folder always says exactly what produced it, and it is stored in every checkpoint.

Every value is checked against its field's type (``check_value``) wherever it comes from, so a
value YAML reads differently from what was meant is an error naming the key rather than a silently
different run: ``steps: 5.7`` (not an integer), ``resume: "no"`` (a string, not a boolean). One
leniency: a float key accepts a string that reads as a finite number, because YAML 1.1 (PyYAML)
reads ``lr: 1e-4`` as the string ``"1e-4"`` (it wants ``1.0e-4``). Unknown keys are errors that
suggest the nearest known key.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gladiff.errors import UsageError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PARALLEL = ("ddp", "fsdp")
# "model"/"blocks": gladiff.models.compile_model's scopes; "auto": gladiff.train.autocompile.
COMPILE = ("auto", "none", "model", "blocks")


def _opt(default, help: str, **kw):
    """A config field whose ``help`` becomes the flag's ``--help`` text."""
    if isinstance(default, dict):
        return field(default_factory=dict, metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """Everything a training run depends on; each field's ``help`` is its ``--help`` text."""

    # --- where
    run_dir: str = _opt("runs/train", "folder for checkpoints, config.yaml, samples/, metrics")
    # --- data
    data: str = _opt("digits", "digits | glyphs | imagefolder:PATH | latents:PATH")
    image_size: int = _opt(16, "training resolution in pixels (latents: must match the extraction)")
    random_flip: bool | None = _opt(None, "random horizontal flips (default: the dataset's own)")
    num_workers: int | str = _opt("auto", "DataLoader worker processes per rank; auto: 0 on a CPU and for the "
                                          "in-memory digits, else up to 4 (data read from disk or rendered, on a GPU)")
    # --- model
    model: str = _opt("DiG-S/2", "model zoo name, e.g. DiG-XL/2 or DiT-S/2")
    model_opts: dict = _opt({}, "create_model overrides (depth, hidden_size, num_heads, ...)")
    # --- objective
    objective: str = _opt("ddpm", "training objective: ddpm | flow")
    objective_opts: dict = _opt({}, "create_objective options")
    # --- optimisation
    steps: int = _opt(400_000, "total optimizer steps of the run")
    global_batch_size: int = _opt(256, "batch size summed over all processes")
    lr: float = _opt(1e-4, "AdamW learning rate")
    weight_decay: float = _opt(0.0, "AdamW weight decay")
    betas: tuple = _opt((0.9, 0.999), "AdamW betas", nargs=2)
    warmup_steps: int = _opt(0, "linear learning-rate warm-up steps (0: none)")
    grad_clip: float = _opt(0.0, "clip the global gradient norm to this (0: no clipping)")
    precision: str = _opt("auto", "auto (bf16 on CUDA, else fp32) | fp32 | bf16 | fp16")
    tf32: bool = _opt(True, "allow TF32 matmuls/convolutions on Ampere+ GPUs")
    ema_decay: float = _opt(0.9999, "EMA decay per step")
    seed: int = _opt(0, "global seed (weights, data order, noise)")
    device: str = _opt("auto", "auto | cpu | cuda")
    # --- scale-out (docs/scale_out.md)
    parallel: str = _opt("ddp", "several processes: ddp (replicated weights) | fsdp (FSDP2: weights, "
                                "gradients, optimizer state and EMA sharded; sharded checkpoints)")
    activation_checkpointing: bool = _opt(False, "recompute each transformer block in the backward pass "
                                                 "instead of storing its activations (less memory, ~1/3 more compute)")
    # --- execution
    compile: str = _opt("auto", "torch.compile the training network: auto (none on a CPU; on a GPU blocks "
                                "once a few timed eager steps show that the rest of the run pays the compile "
                                "back) | none | model (one graph for the whole network, fuses across blocks, "
                                "compile time grows with depth) | blocks (each block compiled in place, seconds "
                                "at any depth; docs/training.md)")
    # --- observing
    log_every: int = _opt(100, "steps between logged scalars (bar, TensorBoard, metrics.jsonl)")
    tensorboard: bool = _opt(True, "TensorBoard scalars under RUN_DIR/tb when tensorboard is installed")
    sample_every: int = _opt(0, "steps between EMA sample grids RUN_DIR/samples/step-N.png (0: never)")
    sample_steps: int | str | None = _opt(None, "sampler steps for those grids, e.g. 50 or ddim50 "
                                                "(default: the objective's)")
    sample_cfg: float = _opt(1.0, "guidance scale for those grids")
    sample_sampler: str | None = _opt(None, "sampler for those grids (default: the objective's)")
    # --- checkpoints
    ckpt_every: int = _opt(5000, "steps between checkpoints (also written at the end and on SIGTERM/SIGINT)")
    keep_ckpts: int = _opt(2, "newest checkpoints kept on disk (0: keep all)")
    resume: bool = _opt(False, "continue from the newest valid checkpoint in RUN_DIR")

    def validate(self) -> "TrainConfig":
        """Raise ``UsageError`` (a ``ValueError``) naming the first bad field; returns ``self``.

        Types first (``check_value`` on every field, which also normalises: ``betas`` to a tuple of
        floats, an int or a float-looking string for a float key to a float), then ranges."""
        for name in FIELDS:
            setattr(self, name, check_value(name, getattr(self, name)))
        if self.precision not in PRECISIONS:
            raise UsageError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        for name in ("steps", "global_batch_size", "log_every", "image_size"):
            if int(getattr(self, name)) <= 0:
                raise UsageError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("ckpt_every", "sample_every", "keep_ckpts", "warmup_steps"):
            if int(getattr(self, name)) < 0:
                raise UsageError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.num_workers != "auto" and not (isinstance(self.num_workers, int) and self.num_workers >= 0):
            raise UsageError(f"num_workers must be auto or an integer >= 0, got {self.num_workers!r}")
        if not 0.0 <= self.ema_decay <= 1.0:
            raise UsageError(f"ema_decay must be in [0, 1], got {self.ema_decay}")
        if self.lr <= 0:
            raise UsageError(f"lr must be > 0, got {self.lr}")
        if self.grad_clip < 0:
            raise UsageError(f"grad_clip must be >= 0 (0 disables it), got {self.grad_clip}")
        if self.parallel not in PARALLEL:
            raise UsageError(f"parallel must be one of {PARALLEL}, got {self.parallel!r}")
        if self.compile not in COMPILE:
            raise UsageError(f"compile must be one of {COMPILE}, got {self.compile!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise UsageError(f"device must be auto, cpu or cuda[:N], got {self.device!r}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise UsageError(f"betas must lie in [0, 1), got {self.betas}")
        return self

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(d["betas"])  # YAML and checkpoints keep plain lists
        return d


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _kinds(name: str) -> tuple[str, ...]:
    """The types field ``name`` admits, from its annotation: e.g. ``("int", "str", "None")``."""
    return tuple(part.strip() for part in str(FIELDS[name].type).split("|"))


_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
          "dict": "a mapping of keys to values", "tuple": "a list of {n} numbers", "None": "null"}


def _type_name(value) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            tuple: "a list", dict: "a mapping", type(None): "null"}.get(type(value), type(value).__name__)


def _as_float(value) -> float | None:
    """``value`` as a finite float if it is a number (not a boolean) or a string that reads as one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return None
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    return None


def check_value(name: str, value, source: str = ""):
    """``value`` for field ``name``, normalised (a float key's int or numeric string -> float,
    ``betas`` -> a tuple of floats, a mapping -> a dict), or ``UsageError`` naming the key, the
    value and the expected type (``source``, e.g. the YAML file, is named too)."""
    kinds = _kinds(name)
    if value is None and "None" in kinds:
        return None
    if isinstance(value, bool):
        if "bool" in kinds:
            return value
    elif isinstance(value, int) and "int" in kinds:
        return value
    if "float" in kinds and (number := _as_float(value)) is not None:
        return number
    if isinstance(value, str) and "str" in kinds:
        return value
    if isinstance(value, dict) and "dict" in kinds and all(isinstance(k, str) for k in value):
        return dict(value)
    if "tuple" in kinds and isinstance(value, (list, tuple)):
        n = FIELDS[name].metadata.get("nargs", len(value))
        numbers = [_as_float(v) for v in value]
        if len(value) == n and None not in numbers:
            return tuple(numbers)
    n = FIELDS[name].metadata.get("nargs", 2)
    expected = " or ".join(_WORDS[k].format(n=n) for k in kinds)
    hint = ""
    if "bool" in kinds and isinstance(value, str):
        hint = " (write true or false, without quotes)"
    elif "int" in kinds and (isinstance(value, float) or _as_float(value) is not None):
        hint = " (write a whole number such as 400000 or 400_000)"
    where = f"{source}: " if source else ""
    raise UsageError(f"{where}{name} must be {expected}, got {value!r} ({_type_name(value)}){hint}")


# Names other trainers use for our keys, too far apart for a spelling match ("learning_rate" -> "lr").
_ALIASES = {"learning_rate": "lr", "max_steps": "steps", "total_steps": "steps", "iterations": "steps",
            "output_dir": "run_dir", "out_dir": "run_dir", "dataset": "data", "ema": "ema_decay",
            "max_grad_norm": "grad_clip", "clip_grad": "grad_clip", "mixed_precision": "precision",
            "warmup": "warmup_steps"}


def check_keys(values: dict[str, Any], source: str = "") -> None:
    """``UsageError`` for the first key of ``values`` that is not a config field, suggesting the
    nearest known key (by spelling, or a name other trainers use for it)."""
    for key in values:
        if key not in FIELDS:
            near = ([_ALIASES[key]] if key in _ALIASES
                    else difflib.get_close_matches(str(key), list(FIELDS), n=1))
            hint = f"did you mean {near[0]!r}?" if near else f"known keys: {', '.join(FIELDS)}"
            where = f"{source}: " if source else ""
            raise UsageError(f"{where}unknown training config key {key!r}; {hint}")


def config_from_dict(values: dict[str, Any], base: TrainConfig | None = None,
                     source: str = "") -> TrainConfig:
    """``base`` (default: the defaults) with ``values`` applied, each checked (``check_keys``,
    ``check_value``; ``source`` names where the values came from in messages)."""
    check_keys(values, source)
    checked = {k: check_value(k, v, source) for k, v in values.items()}
    return dataclasses.replace(base or TrainConfig(), **checked)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping stored in a YAML config file (``{}`` for an empty file)."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"config file {path} is a folder; give the path of a YAML file")
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise UsageError(f"config file {path} is not valid YAML: {_yaml_problem(err)}") from err
    if not isinstance(values, dict):
        raise UsageError(f"config file {path} must hold a mapping of keys to values, "
                         f"got {type(values).__name__}")
    return values


def resolve_config(yaml_path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                   base: TrainConfig | None = None) -> TrainConfig:
    """Defaults (or ``base``) < YAML file < ``overrides`` (the flags the user typed), validated.

    ``model_opts``/``objective_opts`` from the flags are merged key by key into the YAML's.
    """
    cfg = base or TrainConfig()
    if yaml_path is not None:
        cfg = config_from_dict(load_yaml(yaml_path), cfg, source=str(yaml_path))
    overrides = dict(overrides or {})
    for key in ("model_opts", "objective_opts"):
        if key in overrides:
            overrides[key] = {**getattr(cfg, key), **overrides[key]}
    return config_from_dict(overrides, cfg).validate()


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (keys in field order)."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def parse_key_values(pairs: list[str] | None) -> dict[str, Any]:
    """``["depth=4", "gla_backend=chunk"]`` -> ``{"depth": 4, "gla_backend": "chunk"}``; values are
    parsed as YAML."""
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"expected KEY=VALUE, got {pair!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as err:
            raise UsageError(f"{pair!r}: the value is not valid YAML ({_yaml_problem(err)})") from err
    return out


def _yaml_problem(err: yaml.YAMLError) -> str:
    """A YAML parse error in one line: what and where (line and column, 1-based)."""
    mark = getattr(err, "problem_mark", None)
    what = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"{what} at line {mark.line + 1}, column {mark.column + 1}" if mark else what
