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
    p.add_argument("--out", type=Path, default=Path("bench.json"),
                   help="JSON file for the results and the machine info (default bench.json)")
    p.add_argument("--quick", action="store_true",
                   help="tiny sizes, one round each: a smoke run in well under a minute "
                        "(figures not meaningful)")
    p.add_argument("--only", type=_sections, default=None, metavar="A,B",
                   help="run only these sections (pipeline, train_step, compile, ddp, "
                        "data_wait, threads, staging, inference)")


def _write_json(path: Path, doc: dict) -> None:
    import json

    from unetdist.atomic import write_atomic

    write_atomic(path, json.dumps(doc, indent=1) + "\n")


def run(args: argparse.Namespace) -> int:
    from unetdist.tools.bench import SECTIONS, format_table, run_all

    result = run_all(quick=args.quick, only=args.only or SECTIONS,
                     log=lambda s: print(s, file=sys.stderr, flush=True))
    _write_json(args.out, result)
    print(format_table(result))
    print(f"wrote {args.out}")
    return 1 if result["errors"] else 0
