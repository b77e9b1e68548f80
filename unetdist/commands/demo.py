"""`unetdist demo`: synthetic data -> shards -> staging -> DDP training -> evaluation -> report."""

from __future__ import annotations

import argparse
from pathlib import Path

from unetdist.commands._common import add_quiet_argument

HELP = "end-to-end demo on synthetic fundus images (shard, stage, train with DDP, evaluate)"


def _positive(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return v


def add_arguments(p: argparse.ArgumentParser) -> None:
    from unetdist.commands.synth import parse_size
    from unetdist.tools.demo import AV_SIZE, DEFAULT_SIZE

    p.add_argument("--workdir", type=Path, default=Path("demo_run"),
                   help="folder for the data, the shards, the staged copy and the run "
                        "(default demo_run; a re-run replaces what the demo wrote there)")
    p.add_argument("--config", type=Path, default=None,
                   help="experiment YAML (default: configs/demo.yaml, shipped in the package)")
    p.add_argument("--task", choices=("vessel", "av"), default="vessel",
                   help="vessel: vessel vs background (default); av: arteries, veins and "
                        "crossings, a 4-class model on synthetic RITE-layout data "
                        "(default config configs/demo_av.yaml)")
    p.add_argument("--size", type=parse_size, default=None, metavar="HxW",
                   help=f"synthetic image size (default {DEFAULT_SIZE[0]}x{DEFAULT_SIZE[1]}, "
                        f"{AV_SIZE[0]}x{AV_SIZE[1]} for --task av)")
    p.add_argument("--n-train", type=_positive, default=20,
                   help="synthetic training images, 10%% of them held out for validation "
                        "(default 20)")
    p.add_argument("--n-test", type=_positive, default=20, help="synthetic test images (default 20)")
    p.add_argument("--steps", type=_positive, default=None,
                   help="training steps (default: train.max_steps of the config)")
    p.add_argument("--nproc", type=_positive, default=None,
                   help="training processes (default: every GPU, or 2 CPU processes)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the synthetic data (default 0) and of training (default: the "
                        "config's)")
    add_quiet_argument(p)
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="training overrides, e.g. model.width=32 optim.lr=3e-3")


def run(args: argparse.Namespace) -> int:
    from unetdist.errors import UserError
    from unetdist.tools.demo import DemoOptions, run_demo, summary

    if args.seed is not None and args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    overrides = list(args.overrides)
    if args.quiet:
        overrides.append("train.progress=false")
    opts = DemoOptions(workdir=args.workdir, config=args.config, size=args.size,
                       n_train=args.n_train, n_test=args.n_test, steps=args.steps,
                       nproc=args.nproc, overrides=overrides, seed=args.seed, task=args.task,
                       progress=not args.quiet)
    print(summary(run_demo(opts)), flush=True)
    return 0
