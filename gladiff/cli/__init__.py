"""The `gladiff` command line: one module per subcommand.

Each module in ``COMMANDS`` exposes ``register(subparsers)``, which adds its parser and sets
``func`` (called with the parsed namespace; its return value is the exit code). The CLI is the top
layer: it calls pipelines, never the other way round.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# Subcommand modules, in the order `gladiff --help` lists them.
COMMANDS = ["models", "train", "extract_latents", "sample", "eval", "bench", "demo"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gladiff",
        description="DiG (Gated Linear Attention diffusion transformers) and DiT baselines.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"gladiff.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as err:
        print(f"gladiff {args.command}: error: {err}", file=sys.stderr)
        return 2
