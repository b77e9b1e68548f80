"""`unetdist shard SRC OUT --layout ...` and `unetdist shard --verify OUT`."""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

from unetdist.commands._common import add_quiet_argument

HELP = "validate a raw dataset and write webdataset shards + manifest.json (or --verify them)"

_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_bytes(text: str) -> int:
    """'1000', '64K', '256M', '2G' (binary units) -> bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([kmg]?)i?b?\s*", text.lower())
    if not m or int(m.group(1)) < 1:
        raise argparse.ArgumentTypeError(f"expected a size like 256M, got {text!r}")
    return int(m.group(1)) * _UNITS[m.group(2)]


def add_arguments(p: argparse.ArgumentParser) -> None:
    from unetdist.data.ingest.checks import DEFAULT_MAX_PIXELS
    from unetdist.data.manifest import DEFAULT_MAX_BYTES, DEFAULT_MAX_SAMPLES, LAYOUTS

    p.add_argument("src", nargs="?", metavar="SRC", help="raw dataset folder")
    p.add_argument("out", nargs="?", metavar="OUT", help="shard folder to create")
    p.add_argument("--verify", metavar="OUT", help="re-hash the shards of OUT against its "
                   "manifest.json (exit 1 on a mismatch) instead of writing")
    p.add_argument("--layout", choices=LAYOUTS, default="drive",
                   help="drive, chase (CHASE_DB1), stare, hrf: each dataset's official tree "
                   "(see docs/datasets.md); rite: RITE's artery/vein labels "
                   "(AV_groundTruth/); seed: Train_Images/Train_Labels/Test_*; "
                   "folders: --images/--labels [--fov] (default drive)")
    g = p.add_argument_group("folders layout (folders relative to SRC; pairing by file stem)")
    for name, what in (("images", "images (default: images)"),
                       ("labels", "labels (default: labels)"),
                       ("fov", "FOV masks (default: none, the whole image)"),
                       ("labels2", "second-annotator labels (optional)")):
        g.add_argument(f"--{name}", metavar="DIR", help=f"training {what}")
        g.add_argument(f"--test-{name}", metavar="DIR", help=f"test {what.split(' (')[0]}")
    g.add_argument("--image-suffix", default="", metavar="S",
                   help="image stems end in S, the rest is the pairing key (default none)")
    for name in ("label", "fov", "label2"):
        g.add_argument(f"--{name}-suffix", default="", metavar="S",
                       help=f"the {name} of key K is K<S>.* (e.g. _mask; default none; a "
                       f"suffix starting with - is written --{name}-suffix=--av)")
    _add_class_arguments(p)
    p.add_argument("--split-val", type=float, default=None, metavar="F",
                   help="fraction of training samples moved to val, >= 1 sample when > 0 "
                   "(default 0.1, or 0 with --folds; 0 keeps all for training)")
    p.add_argument("--folds", type=int, default=0, metavar="K",
                   help="split the training samples (stare: all labelled samples) into K "
                   "folds with shards of their own; train with data.fold=i to validate on "
                   "fold i and train on the rest")
    p.add_argument("--fold-seed", type=int, default=0, metavar="S",
                   help="seed of the fold assignment (default 0)")
    p.add_argument("--binarize", type=float, default=None, metavar="T",
                   help="threshold masks with 3+ gray levels at T (pixels > T are 1), e.g. "
                   "JPEG-damaged labels; recorded in the manifest (default: refuse them)")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, metavar="N",
                   help="refuse images over N pixels, read from the file header before "
                   f"decoding (default {DEFAULT_MAX_PIXELS // 10**6} MP)")
    p.add_argument("--max-samples", type=int, default=DEFAULT_MAX_SAMPLES, metavar="N",
                   help=f"samples per shard at most (default {DEFAULT_MAX_SAMPLES})")
    p.add_argument("--max-bytes", type=parse_bytes, default=DEFAULT_MAX_BYTES, metavar="B",
                   help="bytes per shard at most, e.g. 64M (default 256M)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    add_quiet_argument(p)


def _add_class_arguments(p: argparse.ArgumentParser) -> None:
    from unetdist.data.ingest.checks import DEFAULT_MAX_FAR_SHARE, DEFAULT_SNAP_TOLERANCE

    g = p.add_argument_group("class masks (multi-class labels: --layout rite, folders, seed)")
    table = g.add_mutually_exclusive_group()
    table.add_argument("--classes", nargs="+", metavar="NAME=R,G,B",
                       help="the class table, background first: e.g. background=0,0,0 "
                       "artery=255,0,0 vein=0,0,255 uncertain=255,255,255:ignore (:ignore: "
                       "pixels no loss or metric counts). Colour masks are snapped to these "
                       "colours, one-channel masks are class indices (default for rite: "
                       "RITE's colours; otherwise binary masks)")
    table.add_argument("--classes-file", metavar="YAML",
                       help="the class table as a YAML list of {name, colour, ignore?}")
    g.add_argument("--multilabel", action="store_true",
                   help="the classes after the background are overlapping labels (disc and "
                   "cup; vessel, artery and vein), each a binary mask in its own subfolder "
                   "of --labels named after it (--layout folders); at most 6 labels")
    g.add_argument("--snap-tolerance", type=float, default=None, metavar="D",
                   help="a colour-mask pixel within RGB distance D of a class colour takes "
                   f"that class (JPEG masks; default {DEFAULT_SNAP_TOLERANCE:g})")
    g.add_argument("--max-far-share", type=float, default=None, metavar="F",
                   help="refuse a colour mask when more than this share of its pixels is "
                   f"farther than D from every class colour (default {DEFAULT_MAX_FAR_SHARE:g})")


def _class_table(args: argparse.Namespace):
    """The --classes / --classes-file table, or None (ConfigError naming the bad entry)."""
    from unetdist.data.classes import ClassTable
    from unetdist.errors import UserError

    mode = "multilabel" if args.multilabel else "multiclass"
    if args.classes:
        return ClassTable.from_specs(args.classes, mode)
    if args.classes_file:
        return ClassTable.from_yaml(args.classes_file, mode)
    if args.multilabel:
        raise UserError("--multilabel needs the labels: give --classes (or --classes-file), "
                        "background first, e.g. background=0,0,0 disc=255,255,0 cup=255,0,0")
    return None


def _verify(root: str, progress: bool) -> int:
    from unetdist.data.manifest import read_manifest, verify_shards

    problems = verify_shards(root, progress=progress)
    for p in problems:
        print(f"mismatch: {p}", file=sys.stderr)
    if problems:
        print(f"{len(problems)} shard(s) of {root} do not match manifest.json", file=sys.stderr)
        return 1
    m = read_manifest(root)
    n = sum(len(e["shards"]) for e in m["splits"].values())
    print(f"ok: {n} shards, {m['total_bytes']} bytes match {root}/manifest.json")
    return 0


def run(args: argparse.Namespace) -> int:
    from unetdist.data.ingest.writer import classes_summary, fov_summary, shard_dataset
    from unetdist.errors import UserError

    if args.verify:
        if args.src or args.out:
            raise UserError("--verify OUT takes no SRC/OUT arguments")
        return _verify(args.verify, not args.quiet)
    if not args.src or not args.out:
        raise UserError("usage: unetdist shard SRC OUT --layout ... (or --verify OUT)")
    start = time.perf_counter()
    folder_opts = {k: getattr(args, k) for k in (
        "images", "labels", "fov", "labels2", "test_images", "test_labels", "test_fov",
        "test_labels2", "image_suffix", "label_suffix", "fov_suffix", "label2_suffix")}
    m = shard_dataset(args.src, args.out, layout=args.layout, split_val=args.split_val,
                      max_samples=args.max_samples, max_bytes=args.max_bytes,
                      progress=not args.quiet, overwrite=args.force, binarize=args.binarize,
                      folds=args.folds, fold_seed=args.fold_seed, max_pixels=args.max_pixels,
                      classes=_class_table(args), snap_tolerance=args.snap_tolerance,
                      max_far_share=args.max_far_share, **folder_opts)
    splits = m["splits"]
    counts = ", ".join(f"{s} {e['samples']}" for s, e in splits.items())
    n = sum(e["samples"] for e in splits.values())
    shards = sum(len(e["shards"]) for e in splits.values())
    print(f"wrote {n} samples ({counts}) in {shards} shards, {m['total_bytes']} bytes "
          f"({m['total_bytes'] / 2**20:.1f} MiB), {time.perf_counter() - start:.1f} s "
          f"-> {os.path.abspath(args.out)}")
    if m.get("folds"):
        sizes = "/".join(str(len(ids)) for ids in m["folds"]["ids"])
        print(f"{m['folds']['k']} folds of the training samples ({sizes}): train with "
              f"data.fold=0..{m['folds']['k'] - 1}")
    if fov_line := fov_summary(m):
        print(fov_line)
    if classes_line := classes_summary(m):
        print(classes_line)
    return 0
