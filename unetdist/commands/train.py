"""`unetdist train`: the accelerate trainer (run it under `accelerate launch -m unetdist train`)."""

from __future__ import annotations

import argparse

from unetdist.commands._common import add_config_arguments, load_from_args

HELP = "train (multi-process: accelerate launch -m unetdist train --config F key=value ...)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config_arguments(p)
    p.add_argument("--check", action="store_true",
                   help="only validate the config and the data paths (one process, no "
                        "training); launch/train.sh and slurm/train.sbatch run it first")


def run(args: argparse.Namespace) -> int:
    from unetdist.train.loop import check_only, fit
    from unetdist.train.preempt import process_exits_after_training

    cfg = load_from_args(args)
    if args.check:
        print(check_only(cfg))
        return 0
    process_exits_after_training()
    result = fit(cfg)
    # a preempted run exits 0 too: `accelerate launch` returns 1 whatever its workers return,
    # so a requeue script reads run_dir/PREEMPTED rather than the exit status. Ctrl-C is the
    # user's stop: 130, as for any interrupted command.
    return 130 if result.interrupted else 0
