"""The `gladiff` command line: one module per subcommand.

Each module in ``COMMANDS`` exposes ``register(subparsers)``, which adds its parser and sets
``func`` (called with the parsed namespace; its return value is the exit code). The CLI is the top
layer: it calls pipelines, never the other way round.

Errors a user can fix (``gladiff.errors.GladiffError``, and the ``ValueError``/``OSError`` the
library raises for bad values and files) end the command with one line on stderr and exit status
2; ``--debug`` (or ``GLADIFF_DEBUG=1``) shows the traceback instead.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from gladiff.errors import GladiffError

# Subcommand modules, in the order `gladiff --help` lists them.
COMMANDS = ["models", "train", "extract_latents", "sample", "eval", "export", "convert", "bench", "demo"]
DEBUG_ENV = "GLADIFF_DEBUG"
_DEBUG_HELP = f"show the traceback of an error instead of one line (also {DEBUG_ENV}=1)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gladiff",
        description="DiG (Gated Linear Attention diffusion transformers) and DiT baselines.",
    )
    parser.add_argument("--debug", action="store_true", help=_DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"gladiff.cli.{name}").register(sub)
    for p in sub.choices.values():  # also after the subcommand; SUPPRESS keeps `gladiff --debug X`
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=_DEBUG_HELP)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    debug = args.debug or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        return int(args.func(args) or 0)
    except (GladiffError, ValueError, OSError) as err:
        if debug:
            raise
        print(f"gladiff {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2


def one_line(err: BaseException) -> str:
    """The message of ``err`` on one line. A bare ``OSError`` from the system (one gladiff did not
    word itself: it carries an ``strerror``) also says how to see where it came from."""
    text = str(err) or type(err).__name__
    if isinstance(err, OSError) and not isinstance(err, GladiffError) and err.strerror:
        text = f"{err.filename}: {err.strerror}" if err.filename else err.strerror
        text += f" (--debug or {DEBUG_ENV}=1 shows where)"
    return " ".join(text.split())
