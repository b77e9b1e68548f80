"""`unetdist report RUN_DIR`: write RUN_DIR/report.html and print its path."""

from __future__ import annotations

import argparse

HELP = "build a self-contained HTML report (curves, evaluation, environment) for a run"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (train.run_dir)")


def run(args: argparse.Namespace) -> int:
    from unetdist.track.report import build_report

    print(build_report(args.run_dir))
    return 0
