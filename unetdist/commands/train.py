"""`unetdist train`: the accelerate trainer (run it under `accelerate launch -m unetdist train`)."""

from __future__ import annotations

import argparse

from unetdist.commands._common import add_config_arguments, load_from_args

HELP = "train (multi-process: accelerate launch -m unetdist train --config F key=value ...)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)


def run(args: argparse.Namespace) -> int:
    from unetdist.train.loop import fit

    fit(load_from_args(args))
    # a preempted run exits 0 too: `accelerate launch` returns 1 whatever its workers return,
    # so a requeue script reads run_dir/PREEMPTED rather than the exit status
    return 0
