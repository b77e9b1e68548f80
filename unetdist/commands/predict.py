"""`unetdist predict`: vessel maps for a folder of images with a best model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from unetdist.commands._common import add_quiet_argument

HELP = "predict vessel probability + binary PNGs for a folder of images"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, nargs="+",
                   help="RUN/best folder or exported .safetensors file; several = an ensemble "
                        "averaging their probabilities")
    p.add_argument("--images", required=True, help="folder of PNG/JPEG/TIFF images, any size")
    p.add_argument("--out", required=True, help="output folder for <stem>.png, <stem>_prob.png")
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
    from unetdist.config import config_from_dict, to_dict
    from unetdist.distributed import pick_device
    from unetdist.errors import DataError, FileSystemError
    from unetdist.eval.ensemble import load_models
    from unetdist.eval.predict import (
        check_output_folder,
        list_images,
        predict_folder,
        split_outputs,
    )
    from unetdist.log import warn

    split_checkpoints(args)
    images = Path(args.images)
    if not split_outputs(list_images(images))[0]:
        raise DataError(f"no image files (png/jpg/tif/...) in {images}")
    fov_dir = Path(args.fov) if args.fov else None
    if fov_dir is not None and not fov_dir.is_dir():
        raise DataError(f"FOV mask folder not found: {fov_dir}")
    out = Path(args.out)
    check_output_folder(out, images, fov_dir, args.overwrite)
    model, cfg, _ = load_models(args.checkpoint)
    cfg = config_from_dict(to_dict(cfg), args.overrides, only="eval")
    model = model.to(pick_device(args.device))
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FileSystemError.of(e, out, "create the output folder", "--out") from None
    report = predict_folder(model, cfg, images, out, fov_dir=fov_dir,
                            progress=not args.quiet)
    if fov_dir is not None and report.estimated_fov:
        warn(f"no FOV mask in {fov_dir} for {', '.join(report.estimated_fov)}; estimated from "
             "the image")
    if report.ignored:
        print(f"note: ignored {len(report.ignored)} earlier prediction file(s) in {images} "
              "(<stem>.png beside <stem>_prob.png)", file=sys.stderr)
    for name, reason in report.failed:
        print(f"failed: {reason if name in reason else f'{name}: {reason}'}", file=sys.stderr)
    print(f"predicted {len(report.done)} image(s) into {out}"
          + (f"; {len(report.failed)} failed" if report.failed else ""))
    return 1 if report.failed else 0
