"""`unetdist inspect SHARDS`: a one-page HTML report and a text summary of a shard folder."""

from __future__ import annotations

import argparse

HELP = "summarise a shard folder: splits, class fractions, fingerprint, montage, outliers (HTML)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("shards", metavar="SHARDS", help="shard folder (with manifest.json)")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="folder for index.html + montage.png (default inspect-<shards name>)")


def run(args: argparse.Namespace) -> int:
    from unetdist.plan.inspect_page import run_inspect

    run_inspect(args.shards, args.out)
    return 0
