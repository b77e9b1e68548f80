"""Evaluation speed on DRIVE-size images: the CPU recipe's tiled windows vs whole-image inference.

    python -m unetdist.bench.evaluation [--quick] [--steps N] [--rounds R] [--json out.json]

Issue 23's goal: with the CPU recipe's model and flip TTA, whole-image evaluation must be
>= 2x faster than today's tiles at equal metrics (|FOV Dice difference| <= 0.001). The section
writes synthetic DRIVE-size (584x565) images as shards, trains the CPU recipe
(configs/drive_cpu.yaml: a 16-wide depth-4 UNet) for a fixed number of steps with
`unetdist train` in a child process (its thread policy and imports stay out of this process),
then scores the test split both ways through `evaluate_split`, the evaluator's own code.

`TILED` is the recipe before eval.tile=0 (256 px tiles overlapping by half: on 584x565, 16
tiles, each pixel computed about 3 times); `WHOLE` is one window of the whole image padded to
the network's multiple (592x576), all 4 flip views in one forward. Settings alternate (tiled,
whole, tiled, ...) so that a change of the machine's load hits both alike; each figure is the
fastest round. --quick: 1 training image, 1 test image at half DRIVE's side, a few steps (a
smoke run of the code path: the model is barely trained, so its Dice says nothing).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

DRIVE_SIZE = (584, 565)
TILED = {"tile": 256, "overlap": 0.5, "batch_size": 8, "tta": "flip"}
WHOLE = {"tile": 0, "overlap": 0.5, "batch_size": 8, "tta": "flip"}
GOAL_SPEEDUP, GOAL_DICE = 2.0, 0.001  # issue 23, build item 3
# (train images, test images, training steps, image size); full: 120 steps reach FOV Dice ~0.9
PROFILES = {"quick": (1, 1, 4, (292, 282)), "full": (8, 4, 120, DRIVE_SIZE)}


def make_shards(root: Path, n_train: int, n_test: int,
                size: tuple[int, int] = DRIVE_SIZE) -> str:
    """Synthetic fundus images as shards (train and test, no val split)."""
    from unetdist.data.ingest.synth import write_synthetic
    from unetdist.data.ingest.writer import shard_dataset

    raw = write_synthetic(root / "raw", n_train=n_train, n_test=n_test, size=size,
                          seed=0, progress=False)
    shard_dataset(raw, root / "shards", layout="drive", split_val=0.0, progress=False)
    return str(root / "shards")


def train_recipe(shards: str, run_dir: Path, steps: int) -> Path:
    """Train configs/drive_cpu.yaml for STEPS steps; returns its best/ (the final weights:
    without a val split the trainer exports them as best/)."""
    from unetdist.resources import resource

    cmd = [sys.executable, "-m", "unetdist", "train", "--config",
           str(resource("configs", "drive_cpu.yaml")), f"data.shared_dir={shards}",
           f"train.run_dir={run_dir}", f"train.max_steps={steps}", "train.max_minutes=0",
           "optim.schedule_by=steps", f"optim.warmup_steps={max(1, steps // 10)}",
           "train.resume=none", "train.eval_every=0", "checkpoint.every_steps=0",
           "track.wandb.mode=disabled", "data.num_workers=0"]  # workers cost start-up here
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"training failed (exit {r.returncode}): {r.stderr[-1500:]}")
    return run_dir / "best"


def _score(model, cfg, shard_dir: str, split: str, settings: dict) -> tuple[float, float]:
    """(seconds per image, FOV Dice) of SPLIT under SETTINGS."""
    from unetdist.data.pipeline import eval_samples
    from unetdist.eval.evaluate import evaluate_split

    ecfg = dataclasses.replace(cfg.eval, **settings)
    res = evaluate_split(model, eval_samples(cfg.data, shard_dir, split, rank=0, world_size=1),
                         ecfg, progress=False)
    return res["seconds_per_image"], res["fov"]["dice"]


def eval_speed(checkpoint: str | Path, data: str | Path, split: str = "test",
               rounds: int = 1) -> dict:
    """Seconds per image and FOV Dice of SPLIT of DATA (a shard folder), tiled vs whole
    image, `rounds` times each way; `ratios` holds the speed-up (tiled / whole time)."""
    from unetdist.eval.inference import load_for_inference

    model, cfg = load_for_inference(checkpoint)
    rows: dict[str, list[tuple[float, float]]] = {"tiled": [], "whole": []}
    for _ in range(max(1, rounds)):
        for name, settings in (("tiled", TILED), ("whole", WHOLE)):
            rows[name].append(_score(model, cfg, str(data), split, settings))
    best = {k: min(v, key=lambda r: r[0]) for k, v in rows.items()}
    (t_sec, t_dice), (w_sec, w_dice) = best["tiled"], best["whole"]
    speedup, diff = t_sec / w_sec, abs(t_dice - w_dice)
    return {"tiled": {**TILED, "sec_per_image": t_sec, "fov_dice": t_dice},
            "whole": {**WHOLE, "sec_per_image": w_sec, "fov_dice": w_dice},
            "ratios": {"whole image vs tiled, s/image (flip TTA)": speedup},
            "dice_difference": diff,
            "goal_met": bool(speedup >= GOAL_SPEEDUP and diff <= GOAL_DICE),
            "meta": {"split": split, "rounds": rounds,
                     "model": f"{cfg.model.name} width {cfg.model.width} depth "
                              f"{cfg.model.depth}", "threads": torch.get_num_threads(),
                     "load_avg_1min": os.getloadavg()[0]}}


def run_benchmark(quick: bool = False, steps: int | None = None, rounds: int | None = None,
                  progress: bool = True) -> dict:
    """Train the recipe on synthetic DRIVE-size shards, then `eval_speed` on their test split."""
    n_train, n_test, default_steps, size = PROFILES["quick" if quick else "full"]
    steps = steps or default_steps
    with tempfile.TemporaryDirectory(prefix="unetdist-bench-eval-") as tmp:
        root = Path(tmp)
        shards = make_shards(root, n_train, n_test, size)
        if progress:
            print(f"bench evaluation: training the CPU recipe for {steps} steps",
                  file=sys.stderr, flush=True)
        best = train_recipe(shards, root / "run", steps)
        res = eval_speed(best, shards, "test", rounds or (1 if quick else 2))
    res["meta"].update(train_steps=steps, train_images=n_train, test_images=n_test,
                       image=list(size), quick=quick)
    return res


def format_report(res: dict) -> str:
    """Both settings, the speed-up, the Dice difference and whether the goal is met."""
    m = res["meta"]
    head = (f"evaluation speed ({m['model']} trained {m['train_steps']} steps, flip TTA, "
            f"{m['test_images']} synthetic {m['image'][0]}x{m['image'][1]} test images, "
            f"{m['threads']} threads, load {m['load_avg_1min']:.1f})")
    lines = [head]
    for name in ("tiled", "whole"):
        r = res[name]
        what = "whole image" if r["tile"] == 0 else f"tile {r['tile']}, overlap {r['overlap']}"
        lines.append(f"  {name:<6} {what:<24} {r['sec_per_image']:.3f} s/image, "
                     f"FOV dice {r['fov_dice']:.4f}")
    (speedup,) = res["ratios"].values()
    lines.append(f"  speed-up {speedup:.2f}x, |dice difference| {res['dice_difference']:.4f}; "
                 f"goal (>= {GOAL_SPEEDUP:g}x, <= {GOAL_DICE:g}) "
                 f"{'met' if res['goal_met'] else 'NOT met'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a few steps, 1 test image (smoke)")
    p.add_argument("--steps", type=int, default=None, help="training steps before timing")
    p.add_argument("--rounds", type=int, default=None, help="timed passes over the split")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the result here")
    a = p.parse_args(argv)
    res = run_benchmark(a.quick, a.steps, a.rounds)
    print(format_report(res))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
