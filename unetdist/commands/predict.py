"""`unetdist predict`: vessel maps for a folder of images with a best model."""

from __future__ import annotations

import argparse
import sys

from unetdist.commands._common import add_quiet_argument

HELP = ("predict vessel probability + binary PNGs (multi-class models: colour-coded classes, "
        "per-class probabilities, overlay) for a folder of images")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, nargs="+",
                   help="RUN/best folder or exported .safetensors file; several = an ensemble "
                        "averaging their probabilities")
    p.add_argument("--images", required=True,
                   help="an image file or a folder of PNG/JPEG/TIFF images, any size")
    p.add_argument("--out", required=True,
                   help="output folder for <stem>.png, <stem>_prob.png (multi-class: <stem>.png "
                        "in the classes' colours, <stem>.<class>.png, <stem>.overlay.png)")
    p.add_argument("--fov", help="folder of FOV masks named <stem> or <stem>_mask "
                                 "(default: estimated from the dark border, else whole image)")
    p.add_argument("--overwrite", action="store_true",
                   help="allow --out inside --images/--fov (input files are still never replaced)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    add_quiet_argument(p)
    p.add_argument("overrides", nargs="*", metavar="eval.key=value",
                   help="inference overrides, e.g. eval.tta=true eval.threshold=0.4")


def run(args: argparse.Namespace) -> int:
    from unetdist.commands._common import split_checkpoints
    from unetdist.eval.predict import predict_images
    from unetdist.log import warn

    split_checkpoints(args)
    report = predict_images(args.checkpoint, args.images, args.out, fov_dir=args.fov,
                            overwrite=args.overwrite, device=args.device,
                            overrides=args.overrides, progress=not args.quiet)
    if args.fov and report.estimated_fov:
        warn(f"no FOV mask in {args.fov} for {', '.join(report.estimated_fov)}; estimated from "
             "the image")
    for name in report.bad_names:
        warn(f"skipped {name} in {args.images}: its name is not valid UTF-8; rename it")
    if report.ignored:
        print(f"note: ignored {len(report.ignored)} earlier prediction file(s) in {args.images} "
              "(<stem>.png beside <stem>_prob.png or <stem>.overlay.png)", file=sys.stderr)
    for name, reason in report.failed:
        print(f"failed: {reason if name in reason else f'{name}: {reason}'}", file=sys.stderr)
    print(f"predicted {len(report.done)} image(s) into {args.out}"
          + (f"; {len(report.failed)} failed" if report.failed else ""))
    return 1 if report.failed else 0
