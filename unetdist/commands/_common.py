"""Argument helpers shared by the commands that take a config."""

from __future__ import annotations

import argparse


def add_config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="experiment YAML (configs/*.yaml); defaults when omitted")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides, e.g. optim.lr=3e-4 train.precision=bf16")


def add_quiet_argument(p: argparse.ArgumentParser) -> None:
    """The one spelling of "no progress bars" across commands (--no-progress still accepted)."""
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--no-progress", dest="quiet", action="store_true", help=argparse.SUPPRESS)


def load_from_args(args: argparse.Namespace):
    from unetdist.config import load_config

    return load_config(args.config, args.overrides)


def split_checkpoints(args: argparse.Namespace) -> None:
    """`--checkpoint A B eval.tta=flip`: argparse hands the trailing overrides to the
    several-valued --checkpoint; give them back to the overrides (no path looks like that)."""
    moved = [c for c in args.checkpoint if "=" in c and c.split("=", 1)[0].startswith("eval.")]
    args.checkpoint = [c for c in args.checkpoint if c not in moved]
    args.overrides = [*moved, *args.overrides]
