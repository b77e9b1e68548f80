"""Sliding-window inference latency per DRIVE-sized (584x565) image.

    python -m unetdist.bench.inference [--quick] [--iters 3] [--json out.json]

Runs `unetdist.eval.inference.sliding_window_predict` (the evaluator's and `predict`'s own code:
Gaussian-blended tiles, eval.tile 256, overlap 0.25 -> 3x3 tiles on 584x565) on a random
preprocessed-like image, for the seed UNet (width 64, depth 4) and the demo's UNet (width 16,
depth 3): fp32, bf16 autocast, channels_last, and flip TTA (4 passes). Variants run
interleaved (one image of each in turn, repeated), so a change of the machine's load hits them
alike; the figure is the median seconds per image after warm-up. On CUDA it synchronises
before reading the clock. --quick: a 96x88 image, 64 px tiles, width-8 models (a smoke run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from unetdist.config import EvalConfig, ModelConfig
from unetdist.distributed import pick_device
from unetdist.eval.inference import sliding_window_predict
from unetdist.models.registry import build_model

DRIVE_SIZE = (584, 565)
MODELS = {"seed": {"width": 64, "depth": 4}, "demo": {"width": 16, "depth": 3}}
VARIANTS = [  # (model, precision, channels_last, tta)
    ("seed", "fp32", False, False),
    ("seed", "bf16", False, False),
    ("seed", "fp32", True, False),
    ("demo", "fp32", False, False),
    ("demo", "fp32", False, True),
]


def _build(name: str, quick: bool, channels_last: bool, device: torch.device):
    spec = dict(MODELS[name], width=8) if quick else MODELS[name]
    torch.manual_seed(0)
    model = build_model(ModelConfig(in_channels=1, **spec)).to(device).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _time_one(model, image: torch.Tensor, cfg, precision: str) -> float:
    _sync(image.device)
    t0 = time.perf_counter()
    prob = sliding_window_predict(model, image, cfg, precision=precision)
    _sync(image.device)
    assert prob.shape[-2:] == image.shape[-2:]
    return time.perf_counter() - t0


def _ratios(rows: list[dict]) -> dict[str, float]:
    s = {(r["model"], r["precision"], r["channels_last"], r["tta"]): r["sec_per_image"]
         for r in rows}
    pairs = {
        "bf16 speed-up vs fp32 (seed UNet)": (("seed", "fp32", False, False),
                                             ("seed", "bf16", False, False)),
        "channels_last speed-up vs contiguous (seed UNet)": (("seed", "fp32", False, False),
                                                            ("seed", "fp32", True, False)),
        "demo UNet speed-up vs seed UNet": (("seed", "fp32", False, False),
                                           ("demo", "fp32", False, False)),
        "flip-TTA cost (x time, demo UNet)": (("demo", "fp32", False, True),
                                             ("demo", "fp32", False, False)),
    }
    return {k: s[a] / s[b] for k, (a, b) in pairs.items() if a in s and b in s}


def run_benchmark(quick: bool = False, iters: int | None = None, warmup: int = 1,
                  progress: bool = True) -> dict:
    """Seconds per image of each variant; returns {"meta", "rows", "ratios"} (ratios first
    when printed: speed-ups > 1 mean faster, the TTA entry is a cost multiplier)."""
    from tqdm import tqdm


    iters = iters or (1 if quick else 3)
    device = pick_device()
    h, w = (96, 88) if quick else DRIVE_SIZE
    tile = 64 if quick else 256
    image = torch.randn(1, 1, h, w, generator=torch.Generator().manual_seed(0)).to(device)
    models = {(m, cl): _build(m, quick, cl, device) for m, _, cl, _ in VARIANTS}
    times: dict[int, list[float]] = {i: [] for i in range(len(VARIANTS))}
    with tqdm(total=(warmup + iters) * len(VARIANTS), desc="bench inference",
              disable=not progress, file=sys.stderr) as bar:
        for rep in range(warmup + iters):
            for i, (m, prec, cl, tta) in enumerate(VARIANTS):
                cfg = EvalConfig(tile=tile, overlap=0.25, batch_size=4, tta=tta)
                dt = _time_one(models[(m, cl)], image, cfg, "bf16" if prec == "bf16" else "no")
                if rep >= warmup:
                    times[i].append(dt)
                bar.update(1)
    rows = [{"model": m, "width": (8 if quick else MODELS[m]["width"]),
             "depth": MODELS[m]["depth"], "precision": p, "channels_last": cl, "tta": tta,
             "sec_per_image": statistics.median(times[i]), "images": len(times[i])}
            for i, (m, p, cl, tta) in enumerate(VARIANTS)]
    meta = {"image": [h, w], "tile": tile, "overlap": 0.25, "tile_batch": 4, "iters": iters,
            "warmup": warmup, "device": str(device), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "load_avg_1min": os.getloadavg()[0]}
    return {"meta": meta, "ratios": _ratios(rows), "rows": rows}


def format_report(res: dict) -> str:
    m = res["meta"]
    title = (f"sliding-window inference on a {m['image'][0]}x{m['image'][1]} image, tile "
             f"{m['tile']}, overlap {m['overlap']}, {m['device']}, {m['threads']} threads, "
             f"median of {m['iters']}")
    lines = [title, "ratios:"]
    lines += [f"  {k:<50} {v:6.2f}x" for k, v in res["ratios"].items()]
    lines.append(f"  {'model':<6}{'precision':>10}{'ch_last':>9}{'tta':>6}{'s/image':>10}")
    for r in res["rows"]:
        lines.append(f"  {r['model']:<6}{r['precision']:>10}{r['channels_last']!s:>9}"
                     f"{r['tta']!s:>6}{r['sec_per_image']:>10.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small image and models (smoke run)")
    p.add_argument("--iters", type=int, default=None, help="timed images per variant")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the result here")
    a = p.parse_args(argv)
    res = run_benchmark(a.quick, a.iters)
    print(format_report(res))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
