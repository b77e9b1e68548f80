"""`unetdist plan SHARDS`: fingerprint a shard folder and write a config planned for it."""

from __future__ import annotations

import argparse

HELP = "fingerprint a shard folder and write a training config planned for it, every choice explained"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("shards", metavar="SHARDS", help="shard folder (with manifest.json)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="the device the run will train on (default cpu)")
    p.add_argument("--gpus", type=int, default=1, metavar="N",
                   help="processes (GPUs) the run will use (default 1)")
    p.add_argument("--minutes", type=float, default=None, metavar="M",
                   help="training-time budget: sets the step budget from a measured probe "
                   "and optim.schedule_by=time (default: the recipe's)")
    p.add_argument("--task", choices=("vessels",), default="vessels",
                   help="what the labels mark (default vessels)")
    p.add_argument("--out", metavar="FILE", default=None,
                   help="config to write (default plan-<shards folder name>.yaml here)")


def run(args: argparse.Namespace) -> int:
    from unetdist.plan.make import run_plan

    run_plan(args.shards, device=args.device, gpus=args.gpus, minutes=args.minutes,
             task=args.task, out=args.out)
    return 0
