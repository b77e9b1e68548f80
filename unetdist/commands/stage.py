"""`unetdist stage SRC DST`: copy a shard folder to node-local disk, sha256-verified."""

from __future__ import annotations

import argparse
import dataclasses
import json

from unetdist.commands._common import add_quiet_argument

HELP = "copy shards from shared storage to node-local disk (sha256-verified, one copy per node)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("src", help="shard folder with manifest.json (e.g. on shared storage)")
    p.add_argument("dst", help="node-local folder to stage into (e.g. $SLURM_TMPDIR/shards)")
    p.add_argument("--rehash", action="store_true",
                   help="re-hash every local copy instead of trusting its size+mtime marker")
    p.add_argument("--threads", type=int, default=4, help="parallel copies (default 4)")
    p.add_argument("--timeout", type=float, default=3600.0, metavar="SECONDS",
                   help="how long to wait for another process staging into DST (default 3600)")
    add_quiet_argument(p)
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def run(args: argparse.Namespace) -> int:
    from unetdist.data.stage.node import stage, summary
    from unetdist.errors import UserError

    if args.threads < 1:
        raise UserError(f"--threads must be >= 1, got {args.threads}")
    if args.timeout <= 0:
        raise UserError(f"--timeout must be > 0, got {args.timeout:g}")
    result = stage(args.src, args.dst, rehash=args.rehash, threads=args.threads,
                   progress=not args.quiet, lock_timeout=args.timeout)
    if args.json:
        print(json.dumps(dataclasses.asdict(result)))
    else:
        print(summary(args.src, args.dst, result))
    return 0
