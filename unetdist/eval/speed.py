"""Evaluation speed: today's tiled CPU recipe against whole-image inference, at equal metrics.

Both settings use flip TTA (4 views) and 8 windows per forward; they differ only in windows:
`TILED` is `configs/drive_cpu.yaml` before eval.tile=0 (256 px tiles overlapping by half: on
a DRIVE-size 584x565 image 16 tiles, each pixel computed about 3 times), `WHOLE` is one
window of the whole image padded to the network's multiple (592x576), all 4 views in one
forward. With a checkpoint and a shard folder, `eval_speed` scores a split both ways through
`evaluate_split` (the evaluator's own code) and reports seconds per image and FOV Dice of each;
without, it times an untrained CPU-recipe UNet on random DRIVE-size images (speed only).
Settings alternate (tiled, whole, tiled, whole, ...) so that a change of the machine's load
hits both alike; each figure is the fastest round.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import torch

from unetdist.config import EvalConfig

DRIVE_SIZE = (584, 565)
TILED = {"tile": 256, "overlap": 0.5, "batch_size": 8, "tta": "flip"}
WHOLE = {"tile": 0, "overlap": 0.5, "batch_size": 8, "tta": "flip"}


def _score(model, cfg, shard_dir: str, split: str, settings: dict) -> tuple[float, float]:
    """(seconds per image, FOV Dice) of SPLIT under SETTINGS."""
    from unetdist.data.pipeline import eval_samples
    from unetdist.eval.evaluate import evaluate_split

    ecfg = dataclasses.replace(cfg.eval, **settings)
    res = evaluate_split(model, eval_samples(cfg.data, shard_dir, split, rank=0, world_size=1),
                         ecfg, progress=False)
    return res["seconds_per_image"], res["fov"]["dice"]


def _time_random(model, settings: dict, images: int) -> tuple[float, None]:
    from unetdist.eval.inference import sliding_window_predict

    gen = torch.Generator().manual_seed(0)
    best = float("inf")
    for _ in range(images):
        x = torch.randn(1, 1, *DRIVE_SIZE, generator=gen)
        t0 = time.perf_counter()
        sliding_window_predict(model, x, EvalConfig(**settings))
        best = min(best, time.perf_counter() - t0)
    return best, None


def _recipe_model():
    from unetdist.config import load_config
    from unetdist.models.registry import build_model
    from unetdist.resources import resource

    cfg = load_config(str(resource("configs", "drive_cpu.yaml")), [])
    torch.manual_seed(0)
    return build_model(cfg.model, pretrained=False).eval(), cfg


def eval_speed(checkpoint: str | Path | None = None, data: str | Path | None = None,
               split: str = "test", rounds: int = 1, images: int = 2) -> dict:
    """Seconds per image and FOV Dice, tiled vs whole image; `speedup` = tiled / whole time.

    With CHECKPOINT and DATA (a shard folder) the SPLIT is scored `rounds` times each way;
    otherwise an untrained recipe model times `images` random DRIVE-size images each way.
    """
    if checkpoint is not None and data is not None:
        from unetdist.eval.inference import load_for_inference

        model, cfg = load_for_inference(checkpoint)

        def run(s):
            return _score(model, cfg, str(data), split, s)
    else:
        model, cfg = _recipe_model()

        def run(s):
            return _time_random(model, s, images)
    rows = {"tiled": [], "whole": []}
    for _ in range(max(1, rounds)):
        for name, settings in (("tiled", TILED), ("whole", WHOLE)):
            rows[name].append(run(settings))
    best = {k: min(v, key=lambda r: r[0]) for k, v in rows.items()}
    (t_sec, t_dice), (w_sec, w_dice) = best["tiled"], best["whole"]
    return {"tiled": {**TILED, "sec_per_image": t_sec, "fov_dice": t_dice},
            "whole": {**WHOLE, "sec_per_image": w_sec, "fov_dice": w_dice},
            "speedup": t_sec / w_sec,
            "dice_difference": None if t_dice is None else abs(t_dice - w_dice),
            "meta": {"checkpoint": str(checkpoint) if checkpoint else None,
                     "data": str(data) if data else None, "split": split,
                     "model": f"{cfg.model.name} width {cfg.model.width} depth "
                              f"{cfg.model.depth}", "threads": torch.get_num_threads(),
                     "load_avg_1min": os.getloadavg()[0], "rounds": rounds}}


def format_speed(res: dict) -> str:
    """The benchmark's lines: both settings, the speed-up and the Dice difference."""
    m = res["meta"]
    where = f"{m['split']} split of {m['data']}" if m["data"] else \
        f"random {DRIVE_SIZE[0]}x{DRIVE_SIZE[1]} images, untrained model"
    head = (f"evaluation speed ({m['model']}, flip TTA, {where}, {m['threads']} threads, "
            f"load {m['load_avg_1min']:.1f})")
    lines = [head]
    for name in ("tiled", "whole"):
        r = res[name]
        what = "whole image" if r["tile"] == 0 else f"tile {r['tile']}, overlap {r['overlap']}"
        dice = "" if r["fov_dice"] is None else f", FOV dice {r['fov_dice']:.4f}"
        lines.append(f"  {name:<6} {what:<24} {r['sec_per_image']:.3f} s/image{dice}")
    diff = res["dice_difference"]
    lines.append(f"  speed-up {res['speedup']:.2f}x" +
                 ("" if diff is None else f", |dice difference| {diff:.4f}"))
    return "\n".join(lines)
