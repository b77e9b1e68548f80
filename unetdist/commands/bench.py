"""`unetdist bench`: pipeline, train-step, DDP, data-wait, staging and inference figures."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "measure throughput on this machine (data, train step, DDP, staging, inference) -> JSON"


def _sections(text: str) -> tuple[str, ...]:
    from unetdist.tools.bench import SECTIONS

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
                        "benchmarks/RESULTS.md (without CUDA: a reduced CPU form)")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes, one round each: a smoke run in well under a minute "
                        "(figures not meaningful)")
    p.add_argument("--only", type=_sections, default=None, metavar="A,B",
                   help="run only these sections (pipeline, train_step, compile, ddp, "
                        "data_wait, staging, inference)")


def _write_json(path: Path, doc: dict) -> None:
    import json

    from unetdist.atomic import write_atomic

    write_atomic(path, json.dumps(doc, indent=1) + "\n")


def _run_gpu(args: argparse.Namespace) -> int:
    from unetdist.tools.gpu_bench import record, results_row, run_gpu

    doc = run_gpu(args.quick, log=lambda s: print(s, file=sys.stderr, flush=True))
    out = args.out or Path("bench-gpu.json")
    _write_json(out, doc)
    if not doc["variants"]:
        print("warning: no variant ran; nothing recorded", file=sys.stderr)
    elif args.quick:
        print("--quick: figures not meaningful, not recorded in benchmarks/RESULTS.md")
    else:
        print(f"recorded in {record(doc)}")
    print(doc["profile"])
    print(results_row(doc))
    print(f"wrote {out}")
    return 1 if doc["errors"] else 0


def run(args: argparse.Namespace) -> int:
    from unetdist.tools.bench import SECTIONS, format_table, run_all

    if args.gpu:
        if args.only:
            from unetdist.errors import UserError

            raise UserError("--gpu runs its own variants: drop --only")
        return _run_gpu(args)
    args.out = args.out or Path("bench.json")
    result = run_all(quick=args.quick, only=args.only or SECTIONS,
                     log=lambda s: print(s, file=sys.stderr, flush=True))
    _write_json(args.out, result)
    print(format_table(result))
    print(f"wrote {args.out}")
    return 1 if result["errors"] else 0
