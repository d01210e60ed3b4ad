"""`gladiff train`: train a model; every TrainConfig field is a flag, and flags override --config."""
from __future__ import annotations

import argparse
import os
import sys

from gladiff.train.config import FIELDS, parse_key_values

# dict-valued fields take repeated KEY=VALUE flags under a singular name.
_DICT_FLAGS = {"model_opts": "--model-opt", "objective_opts": "--objective-opt"}


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per TrainConfig field. Defaults are suppressed so that only the flags the user
    typed reach the namespace, and so override the YAML file rather than the other way round."""
    for name, f in FIELDS.items():
        help_ = f.metadata.get("help", "")
        ann = str(f.type)
        if name in _DICT_FLAGS:
            parser.add_argument(_DICT_FLAGS[name], dest=name, action="append", metavar="KEY=VALUE",
                                default=argparse.SUPPRESS, help=f"{help_} (repeatable)")
            continue
        flag = "--" + name.replace("_", "-")
        kw = {"dest": name, "default": argparse.SUPPRESS}
        if ann.startswith("bool"):
            kw["action"] = argparse.BooleanOptionalAction
        elif ann.startswith("tuple"):
            n = f.metadata.get("nargs", 2)
            kw.update(type=float, nargs=n, metavar=tuple(f"B{i + 1}" for i in range(n)))
        elif ann.startswith("int | str"):
            kw["type"] = int_or_str
        else:
            kw["type"] = {"int": int, "float": float}.get(ann.split(" ")[0], str)
        # A help text that already explains the default (e.g. "default: the dataset's own") keeps its own.
        default = "" if "default" in help_ else f" (default: {_shown(f)})"
        parser.add_argument(flag, help=help_ + default, **kw)


def _shown(f) -> str:
    """A field's default as typed on the command line / in YAML."""
    value = f.default
    if isinstance(value, bool):
        return "--" + ("" if value else "no-") + f.name.replace("_", "-")
    if isinstance(value, tuple):
        return " ".join(str(v) for v in value)
    return str(value)


def int_or_str(value: str):
    """``"250"`` -> 250, ``"ddim50"`` -> ``"ddim50"`` (sampler steps may be a respacing)."""
    return int(value) if value.strip().lstrip("-").isdigit() else value


def overrides_from_args(args: argparse.Namespace) -> dict:
    """The TrainConfig values the user typed on the command line."""
    out = {}
    for name in FIELDS:
        if hasattr(args, name):
            value = getattr(args, name)
            out[name] = parse_key_values(value) if name in _DICT_FLAGS else value
    return out


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a DiG/DiT model (also under torchrun)",
        description="Train a model. Values come from the defaults, then --config YAML, then the flags "
                    "given here. Launch with `torchrun --nproc_per_node=N -m gladiff train ...` for DDP.")
    p.add_argument("--config", default=None, help="YAML file of TrainConfig keys (flags override it)")
    add_config_flags(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from gladiff.train import NonFiniteLossError, resolve_config, train

    cfg = resolve_config(args.config, overrides_from_args(args))
    try:
        result = train(cfg)
    except NonFiniteLossError as err:
        print(f"gladiff train: stopped: {err}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, one report is enough
        return 0
    if result.stopped_by:
        print(f"stopped by {result.stopped_by} at step {result.step}; resume with --resume "
              f"--run-dir {cfg.run_dir}")
    elif result.checkpoint is not None:
        print(f"done: step {result.step}, checkpoint {result.checkpoint}")
    return 0
