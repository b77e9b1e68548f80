"""`unetdist doctor`: check the environment before training."""

from __future__ import annotations

import argparse
import sys

HELP = "check Python, torch/CUDA, distributed backends, packages and free space"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--path", action="append", default=[], metavar="DIR",
                   help="report free space at DIR (repeatable); a missing DIR is a problem")


def run(args: argparse.Namespace) -> int:
    from unetdist.tools.doctor import run_doctor

    report = run_doctor(args.path)
    print("\n".join(report.lines))
    if report.problems:
        for p in report.problems:
            print(f"problem: {p}", file=sys.stderr)
        return 1
    print("ok: training can run here")
    return 0
