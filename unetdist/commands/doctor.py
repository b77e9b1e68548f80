"""`unetdist doctor`: check the environment before training."""

from __future__ import annotations

import argparse
import sys

from unetdist.commands._common import add_config_arguments, load_from_args

HELP = "check Python, torch/CUDA, distributed backends, packages, /dev/shm and free space"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--path", action="append", default=[], metavar="DIR",
                   help="report free space at DIR (repeatable); a missing DIR is a problem")
    p.add_argument("--nproc", type=int, default=None,
                   help="training processes on this node (default: the GPUs, else 1)")
    add_config_arguments(p)  # --config: check /dev/shm against its data.num_workers


def run(args: argparse.Namespace) -> int:
    import torch

    from unetdist.tools.doctor import run_doctor

    data = load_from_args(args).data if args.config or args.overrides else None
    nproc = args.nproc or max(1, torch.cuda.device_count())
    report = run_doctor(args.path, data, nproc)
    print("\n".join(report.lines))
    if report.problems:
        for p in report.problems:
            print(f"problem: {p}", file=sys.stderr)
        return 1
    print("ok: training can run here")
    return 0
