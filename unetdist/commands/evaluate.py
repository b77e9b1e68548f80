"""`unetdist evaluate`: metrics, predictions and plots of a best model on a split of shards."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

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
    p.add_argument("--out", help="output folder (default: eval-<split>/ beside --checkpoint; "
                                 "required for an ensemble)")
    p.add_argument("--local-dir", help="stage --data to this node-local folder first "
                                       "(one copy per node, verified) and read it from there")
    add_quiet_argument(p)
    p.add_argument("overrides", nargs="*", metavar="eval.key=value",
                   help="evaluation overrides, e.g. eval.tta=true eval.threshold=0.4")


def default_out_dir(checkpoint: str | Path, split: str) -> Path:
    """eval-<split>/ beside the checkpoint: RUN and RUN/best -> RUN/eval-<split>;
    RUN/checkpoints/step-N -> RUN/eval-<split>-step-N (where `report` finds it)."""
    from unetdist.eval.inference import resolve_checkpoint

    p = resolve_checkpoint(checkpoint).resolve()
    if p.parent.name == "checkpoints":
        return p.parent.parent / f"eval-{split}-{p.name}"
    return p.parent / f"eval-{split}"


def _shard_dir(args: argparse.Namespace, cfg) -> str:
    from unetdist.data.manifest import shard_paths

    if args.local_dir:
        from unetdist.data.stage.node import resolve_data_dir

        data = dataclasses.replace(cfg.data, shared_dir=args.data, local_dir=args.local_dir,
                                   stage=True)
        shard_dir = resolve_data_dir(data)
    else:
        shard_dir = args.data
    # DataError naming the folder or split, before any work (data.fold: a k-fold model's val)
    shard_paths(shard_dir, args.split, cfg.data.fold)
    return str(Path(shard_dir).resolve())


def run(args: argparse.Namespace) -> int:
    from unetdist.commands._common import split_checkpoints
    from unetdist.config import config_from_dict, to_dict
    from unetdist.data.pipeline import eval_samples
    from unetdist.distributed import make_accelerator, resolve_precision
    from unetdist.errors import UserError
    from unetdist.eval.ensemble import load_models
    from unetdist.eval.evaluate import evaluate_split, summary_line
    from unetdist.eval.inference import apply_inference_format, resolve_checkpoint
    from unetdist.log import say

    split_checkpoints(args)
    ckpts = args.checkpoint
    if len(ckpts) > 1 and not args.out:
        raise UserError("--out is required when several --checkpoint values form an ensemble")
    model, cfg, metas = load_models(ckpts)  # each model once per process
    cfg = config_from_dict(to_dict(cfg), args.overrides, only="eval")
    shard_dir = _shard_dir(args, cfg)  # before the process group: staging may take long
    out = Path(args.out) if args.out else default_out_dir(ckpts[0], args.split)
    acc = make_accelerator(resolve_precision(cfg.train.precision, inference=True))
    model = apply_inference_format(model.to(acc.device), cfg)  # training memory format
    samples = eval_samples(cfg.data, shard_dir, args.split, rank=acc.process_index,
                           world_size=acc.num_processes)
    paths = [str(resolve_checkpoint(c).resolve()) for c in ckpts]
    info = {"checkpoint": paths[0] if len(paths) == 1 else paths,
            "step": metas[0].get("step") if len(metas) == 1 else [m.get("step") for m in metas],
            "ensemble": len(paths),
            "data": shard_dir, "split": args.split, "world_size": acc.num_processes,
            "device": acc.device.type, "precision": acc.mixed_precision}
    result = evaluate_split(model, samples, cfg.eval, accelerator=acc, out_dir=out, info=info,
                            progress=not args.quiet)
    say(f"{args.split}: {summary_line(result)}")
    if obs := result.get("second_observer"):
        o = obs["fov"]
        say(f"second observer ({obs['num_images']} images): FOV dice {o['dice']:.4f} "
            f"recall {o['recall']:.4f} precision {o['precision']:.4f} accuracy {o['accuracy']:.4f}")
    say(f"wrote {out}")
    acc.end_training()
    return 0
