"""CPU thread choices for one training process: should loader workers get cores of their own?

    python -m unetdist.bench.threads [--quick] [--json out.json]

One training process on synthetic shards (the trainer's `run_batches`: crops with
augmentation, W loader workers; the trainer's `train_step`), timed for each torch intra-op
thread count among: all usable cores, usable cores - W (the trainer's policy: workers get cores
of their own), and 1. All choices run in this one invocation, in ROUNDS rounds of alternating
order, each keeping its best round, so a burst of other work on the machine skews the ratios
less.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from unetdist.bench.train import data_overrides, write_shards
from unetdist.bench.trainer import bench_config, trainer_run, wait_fraction
from unetdist.train.threads import usable_cpus


def thread_choices(usable: int, workers: int) -> dict[str, int]:
    """Named thread counts to compare (duplicates dropped, first name kept)."""
    named = {"usable cores": usable,
             "usable cores - loader workers": max(1, usable - workers), "one thread": 1}
    out: dict[str, int] = {}
    for name, n in named.items():
        if n not in out.values():
            out[name] = n
    return out


def run_benchmark(quick: bool = False, workers: int = 1, rounds: int | None = None) -> dict:
    import torch

    size, n, crop, batch, width = (64, 4, 48, 4, 8) if quick else (256, 20, 128, 4, 16)
    steps, warmup = (3, 1) if quick else (20, 3)
    rounds = rounds or (1 if quick else 2)
    usable = usable_cpus()
    choices = thread_choices(usable, workers)
    before = torch.get_num_threads()
    out = {"usable_cpus": usable, "workers": workers, "image": size, "crop": crop,
           "batch": batch, "model": f"unet width {width} depth 3", "steps": steps,
           "rounds": rounds}
    with tempfile.TemporaryDirectory(prefix="unetdist-bench-") as d:
        shards = write_shards(Path(d), n, size)
        cfg = bench_config(data_overrides(crop, batch, workers, steps + warmup)
                           + [f"model.width={width}", "model.depth=3"])
        best: dict[str, dict] = {}
        try:
            for i in range(rounds):
                order = list(choices.items())
                for name, threads in order if i % 2 == 0 else order[::-1]:
                    torch.set_num_threads(threads)
                    r = wait_fraction(trainer_run(cfg, shards), steps, warmup)
                    if name not in best or r["img_per_s"] > best[name]["img_per_s"]:
                        best[name] = {"choice": name, "threads": threads, **r}
        finally:
            torch.set_num_threads(before)
    out["rows"] = [best[name] for name in choices]
    first = out["rows"][0]
    out["ratios"] = {f"{first['choice']} vs {r['choice']} (img/s)":
                     first["img_per_s"] / r["img_per_s"] for r in out["rows"][1:]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny images: a smoke run")
    ap.add_argument("--workers", type=int, default=1, help="loader workers (default 1)")
    ap.add_argument("--json", help="also write the result to this file")
    a = ap.parse_args()
    res = run_benchmark(a.quick, a.workers)
    for r in res["rows"]:
        print(f"{r['choice']:32s} {r['threads']} thread(s)  {r['img_per_s']:7.2f} img/s  "
              f"data wait {r['wait_fraction']:.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
