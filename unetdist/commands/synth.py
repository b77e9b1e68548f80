"""`unetdist synth OUT`: a synthetic fundus dataset in the DRIVE layout, or with
`--classes av` artery/vein labels in RITE's layout, or with `--classes labels` overlapping
vessel/artery/vein labels as multi-label folders (demo and tests)."""

from __future__ import annotations

import argparse
import time

from unetdist.commands._common import add_quiet_argument

HELP = ("write a synthetic fundus dataset for the demo and tests (DRIVE layout; artery/vein "
        "labels in RITE's with --classes av)")
CLASSES = {  # --classes choice -> what it writes
    "vessel": "binary vessel labels in the DRIVE layout: training/{images,1st_manual,mask}, "
              "test/...",
    "av": "artery/vein labels in RITE's layout: AV_groundTruth/{training,test}/{images,av,"
          "vessel}; av/*.png red artery, blue vein, green crossing, white uncertain",
    "labels": "the same images with overlapping vessel, artery and vein labels (a crossing in "
              "both) as a multi-label folder set: images/, labels/{vessel,artery,vein}/, "
              "test_images/, test_labels/...",
}


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
    p.add_argument("out", metavar="OUT", help="folder to create")
    p.add_argument("--classes", choices=tuple(CLASSES), default="vessel",
                   help="; ".join(f"{k}: {v}" for k, v in CLASSES.items())
                   + " (default vessel)")
    p.add_argument("--fov-masks", action="store_true",
                   help="--classes av: also write DRIVE's FOV masks as AV_groundTruth/<split>/"
                        "mask/NN_<training|test>_mask.gif (RITE ships none; the DRIVE layout "
                        "always has them)")
    p.add_argument("--n-train", type=int, default=20, help="training images (default 20)")
    p.add_argument("--n-test", type=int, default=20, help="test images (default 20)")
    p.add_argument("--size", type=parse_size, default=(584, 565), metavar="HxW",
                   help="image size, height x width (default 584x565, like DRIVE)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    add_quiet_argument(p)


def run(args: argparse.Namespace) -> int:
    from unetdist.data.ingest.synth import write_synthetic
    from unetdist.data.ingest.synth_av import write_synthetic_av, write_synthetic_labels

    start = time.perf_counter()
    common = {"n_train": args.n_train, "n_test": args.n_test, "size": args.size,
              "seed": args.seed, "progress": not args.quiet, "overwrite": args.force}
    if args.classes == "av":
        out = write_synthetic_av(args.out, fov_masks=args.fov_masks, **common)
    elif args.classes == "labels":
        out = write_synthetic_labels(args.out, **common)
    else:
        out = write_synthetic(args.out, **common)
    h, w = args.size
    kind = {"av": "A/V ", "labels": "multi-label "}.get(args.classes, "")
    print(f"wrote {args.n_train + args.n_test} synthetic {kind}images ({args.n_train} train, "
          f"{args.n_test} test, {h}x{w}, seed {args.seed}) in "
          f"{time.perf_counter() - start:.1f} s -> {out}")
    return 0
