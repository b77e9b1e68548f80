"""`unetdist synth OUT`: a synthetic fundus dataset in the DRIVE layout (demo and tests)."""

from __future__ import annotations

import argparse
import time

from unetdist.commands._common import add_quiet_argument

HELP = "write a synthetic fundus dataset (DRIVE layout) for the demo and tests"


def parse_size(text: str) -> tuple[int, int]:
    """'584x565' (HxW) or '96' (square) -> (H, W)."""
    parts = text.lower().split("x")
    try:
        hw = tuple(int(v) for v in parts)
    except ValueError:
        hw = ()
    if len(hw) == 1:
        hw = (hw[0], hw[0])
    if len(hw) != 2 or min(hw) < 32:
        raise argparse.ArgumentTypeError(f"expected HxW with both >= 32, e.g. 584x565, got {text!r}")
    return hw


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", metavar="OUT", help="folder to create (DRIVE layout)")
    p.add_argument("--n-train", type=int, default=20, help="training images (default 20)")
    p.add_argument("--n-test", type=int, default=20, help="test images (default 20)")
    p.add_argument("--size", type=parse_size, default=(584, 565), metavar="HxW",
                   help="image size, height x width (default 584x565, like DRIVE)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    add_quiet_argument(p)


def run(args: argparse.Namespace) -> int:
    from unetdist.data.ingest.synth import write_synthetic

    start = time.perf_counter()
    out = write_synthetic(args.out, n_train=args.n_train, n_test=args.n_test, size=args.size,
                          seed=args.seed, progress=not args.quiet, overwrite=args.force)
    h, w = args.size
    print(f"wrote {args.n_train + args.n_test} synthetic images ({args.n_train} train, "
          f"{args.n_test} test, {h}x{w}, seed {args.seed}) in "
          f"{time.perf_counter() - start:.1f} s -> {out}")
    return 0
