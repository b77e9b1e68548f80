"""`unetdist evaluate`: metrics, predictions and plots of a best model on a split of shards."""

from __future__ import annotations

import argparse

from unetdist.commands._common import add_quiet_argument

HELP = "evaluate a run (its best/), any checkpoint, an exported file or an ensemble on a split"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, nargs="+",
                   help="a run folder (its best/), RUN/best, RUN/checkpoints/step-N or "
                        "RUN/checkpoints/latest, or an exported .safetensors file; several = an "
                        "ensemble averaging their probabilities (e.g. the best of each fold)")
    p.add_argument("--data", required=True,
                   help="shard folder (with manifest.json); the stored config's paths are unused")
    p.add_argument("--split", default="test", choices=("train", "val", "test"))
    p.add_argument("--out", help="output folder (default: eval-<data folder name>-<split>/ "
                                 "beside --checkpoint; required for an ensemble)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace results of other data or another checkpoint found in --out")
    p.add_argument("--local-dir", help="stage --data to this node-local folder first "
                                       "(one copy per node, verified) and read it from there")
    add_quiet_argument(p)
    p.add_argument("overrides", nargs="*", metavar="eval.key=value",
                   help="evaluation overrides, e.g. eval.tta=true eval.threshold=0.4 "
                        "eval.tile=0 (whole-image inference)")


def run(args: argparse.Namespace) -> int:
    from unetdist.commands._common import split_checkpoints
    from unetdist.eval.evaluate import evaluate_checkpoints, summary_line
    from unetdist.log import say

    split_checkpoints(args)
    job = evaluate_checkpoints(args.checkpoint, args.data, args.split, out=args.out,
                               overrides=args.overrides, local_dir=args.local_dir,
                               overwrite=args.overwrite, progress=not args.quiet)
    say(f"{args.split}: {summary_line(job.result)}")
    if obs := job.result.get("second_observer"):
        o = obs["fov"]
        say(f"second observer ({obs['num_images']} images): FOV dice {o['dice']:.4f} "
            f"recall {o['recall']:.4f} precision {o['precision']:.4f} accuracy {o['accuracy']:.4f}")
    say(f"wrote {job.out_dir}")
    return 0
