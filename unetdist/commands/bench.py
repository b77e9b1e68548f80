"""`unetdist bench`: pipeline, train-step, DDP, data-wait, staging and inference figures."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "measure throughput on this machine (data, train step, DDP, staging, inference) -> JSON"


def _sections(text: str) -> tuple[str, ...]:
    from unetdist.bench.runner import SECTIONS

    names = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [n for n in names if n not in SECTIONS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of "
                                         f"{','.join(SECTIONS)}, got {text!r}")
    return names


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=None,
                   help="JSON file for the results and the machine info (default bench.json, "
                        "with --gpu bench-gpu.json)")
    p.add_argument("--gpu", action="store_true",
                   help="the trainer's own step on the accelerator: img/s fp32/bf16/"
                        "bf16+channels_last/+compile, MFU, data wait, host syncs per step, "
                        "all-reduce bandwidth and 1->N scaling; appends a row to "
                        "docs/RESULTS.md (without CUDA: a reduced CPU form)")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes, one round each: a smoke run in well under a minute "
                        "(figures not meaningful)")
    p.add_argument("--only", type=_sections, default=None, metavar="A,B",
                   help="run only these sections (pipeline, train_step, compile, ddp, "
                        "data_wait, threads, staging, inference)")


def run(args: argparse.Namespace) -> int:
    from unetdist.bench.runner import bench

    return bench(args.out, quick=args.quick, gpu=args.gpu, only=args.only)
