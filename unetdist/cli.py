"""`unetdist <command>`: each command lives in unetdist/commands/<name>.py.

A command module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`.
Modules import their heavy dependencies inside `run`, so `unetdist --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from unetdist import __version__
from unetdist.errors import UserError

COMMANDS = ("config", "doctor", "synth", "shard", "inspect", "plan", "stage", "train",
            "evaluate", "predict", "export", "report", "bench", "demo", "sweep")


def _available_commands() -> dict:
    mods = {}
    for name in COMMANDS:
        try:
            mods[name] = importlib.import_module(f"unetdist.commands.{name}")
        except ModuleNotFoundError as e:
            if e.name != f"unetdist.commands.{name}":
                raise
    return mods


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unetdist", description="Distributed UNet training for retinal vessel segmentation.")
    parser.add_argument("--version", action="version", version=f"unetdist {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>", required=True)
    for name, mod in _available_commands().items():
        p = sub.add_parser(name, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def _is_main() -> bool:
    from unetdist.log import is_main  # lazily: it imports torch, `--help` should stay fast

    return is_main()


def should_print(e: UserError) -> bool:
    """Global rank 0 prints a UserError; a node's first process also prints its node's own."""
    if _is_main():
        return True
    return e.node_local and os.environ.get("LOCAL_RANK", "0") == "0"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except UserError as e:
        # Under `accelerate launch` every rank raises the same error: one line for the job.
        # The other ranks exit quietly with the same status.
        if should_print(e):
            print(f"error: {e}", file=sys.stderr, flush=True)
        return e.exit_code
    except KeyboardInterrupt:
        if _is_main():
            print("interrupted", file=sys.stderr, flush=True)
        return 130
