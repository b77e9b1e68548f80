"""The trainer's step, measured three ways: per precision and layout, eager vs compiled, and
the fraction of a step spent waiting for the trainer's stream.

    python -m unetdist.bench.train [--quick] [--json out.json]     # the train_step section

- `train_step`: img/s of `unetdist.train.step.train_step` on in-memory batches (data loading
  not measured) for fp32 and bf16 (`train.precision`; bf16 in a process of its own, since
  accelerate fixes a process's precision with its first Accelerator), contiguous and
  `model.channels_last` (two runs in one process, stepped in turn so a change in the
  machine's load hits both).
- `compile`: the demo's UNet, `model.compile=false` vs `true` (inductor after DDP wrapping,
  exactly as the trainer compiles), one torch thread (as each demo DDP process has: OpenMP
  spin-waits make multi-threaded figures erratic on a busy machine), steps taken in turn,
  median per model; the first (compiling) step reported on its own.
- `data_wait`: one training process with one torch thread reading `run_batches` (crops of
  synthetic fundus images with augmentation) per loader worker count; the cache is warmed and
  the workers started during the untimed warm-up steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from unetdist.bench.models import speedups
from unetdist.bench.trainer import bench_config, timed_step, trainer_run, wait_fraction
from unetdist.train.preempt import PreemptionFlag

PRECISIONS = {"fp32": "no", "bf16": "bf16"}


def synthetic_batch(batch: int, size: int, seed: int = 0) -> dict:
    """A batch as `run_batches` makes it: float image, uint8 label/FOV in {0, 1}, keys."""
    g = torch.Generator().manual_seed(seed)
    return {"image": torch.randn(batch, 1, size, size, generator=g),
            "label": (torch.rand(batch, 1, size, size, generator=g) > 0.88).to(torch.uint8),
            "fov": torch.ones(batch, 1, size, size, dtype=torch.uint8),
            "key": [f"s{i}" for i in range(batch)]}


def _model(width: int, depth: int) -> list[str]:
    return ["data.channels=gray", f"model.width={width}", f"model.depth={depth}"]


def step_worker(precision: str, size: int, width: int, depth: int, batch: int, steps: int,
                warmup: int) -> list[dict]:
    """One precision, contiguous and channels_last, in this process; rows of the section."""
    base = _model(width, depth) + [f"train.precision={PRECISIONS[precision]}"]
    runs = {cl: trainer_run(bench_config(base + [f"model.channels_last={str(cl).lower()}"]))
            for cl in (False, True)}
    data, flag = synthetic_batch(batch, size), PreemptionFlag(signals=())
    times: dict[bool, list[float]] = {cl: [] for cl in runs}
    for rep in range(warmup + steps):
        for cl, run in runs.items():
            dt = timed_step(run, [data], flag)
            if rep >= warmup:
                times[cl].append(dt)
    return [{"batch": batch, "precision": precision, "channels_last": cl,
             "img_per_s": batch / statistics.median(t), "sec_per_step": statistics.median(t),
             "steps": len(t)} for cl, t in times.items()]


def _step_subprocess(precision: str, args: list[str], threads: int) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="unetdist-bench-") as d:
        out = Path(d) / f"{precision}.json"
        cmd = [sys.executable, "-m", "unetdist.bench.train", "--worker", precision, *args,
               "--out", str(out)]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False,
                           env=env)
        if r.returncode != 0 or not out.is_file():
            raise RuntimeError(f"train step worker ({precision}) failed:\n{r.stderr[-2000:]}")
        return json.loads(out.read_text())


def bench_train_step(quick: bool) -> dict:
    """fp32 in this process (every in-process section trains in fp32), bf16 in a fresh one.

    torch's threads as they are; --quick uses one (OpenMP spin-waits on a busy machine can
    make a tiny step take seconds, and a smoke run must stay short).
    """
    size, width, depth, batch, steps = (64, 8, 4, 2, 1) if quick else (256, 64, 4, 2, 3)
    before = torch.get_num_threads()
    threads = 1 if quick else before
    torch.set_num_threads(threads)
    try:
        rows = step_worker("fp32", size, width, depth, batch, steps, warmup=1)
    finally:
        torch.set_num_threads(before)
    args = [f"--{k}={v}" for k, v in (("size", size), ("width", width), ("depth", depth),
                                      ("batch", batch), ("steps", steps))]
    rows += _step_subprocess("bf16", args, threads)
    meta = {"size": size, "width": width, "depth": depth, "steps": steps, "warmup": 1,
            "threads": threads, "step": "unetdist.train.step.train_step"}
    return {"meta": meta, "rows": rows, "ratios": speedups(rows)}


def bench_compile(quick: bool) -> dict:
    """Train-step time of the demo UNet, eager vs `model.compile=true`."""
    if quick:
        return {"skipped": "compiling takes tens of seconds; run without --quick"}
    size, batch, steps = 96, 8, 20
    out = {"size": size, "batch": batch, "steps": steps, "model": "unet width 16 depth 3",
           "torch_threads": 1}
    data, flag = synthetic_batch(batch, size), PreemptionFlag(signals=())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = {name: trainer_run(bench_config(_model(16, 3) + [f"model.compile={flag_}"]))
                for name, flag_ in (("eager", "false"), ("compiled", "true"))}
        times: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(steps + 1):
            for name, run in runs.items():
                times[name].append(timed_step(run, [data], flag))  # step 0 compiles
    finally:
        torch.set_num_threads(threads)
    for name, t in times.items():
        med = statistics.median(t[1:])
        out[name] = {"first_step_s": t[0], "sec_per_step": med, "img_per_s": batch / med}
    out["speedup"] = out["compiled"]["img_per_s"] / out["eager"]["img_per_s"]
    return out


def write_shards(root: Path, n: int, size: int) -> str:
    """N synthetic size x size fundus images as training shards under ROOT."""
    from unetdist.data.ingest.synth import write_synthetic
    from unetdist.data.ingest.writer import shard_dataset

    raw = write_synthetic(root / "raw", n_train=n, n_test=0, size=(size, size), progress=False)
    shard_dataset(raw, root / "shards", split_val=0.0, progress=False)
    return str(root / "shards")


def data_overrides(crop: int, batch: int, workers: int, steps: int) -> list[str]:
    return [f"data.crop={crop}", f"data.batch_size={batch}", f"data.num_workers={workers}",
            f"data.steps_per_epoch={steps}"]


def bench_data_wait(quick: bool) -> dict:
    """Fraction of a training step spent waiting for `run_batches`, per loader worker count."""
    size, n, crop, batch, width = (64, 6, 48, 4, 8) if quick else (256, 20, 96, 8, 16)
    steps, warmup = (4, 1) if quick else (30, 3)
    workers = (0, 1) if quick else (0, 1, 2)
    out = {"image": size, "crop": crop, "batch": batch, "model": f"unet width {width} depth 3",
           "steps": steps, "torch_threads": 1, "workers": {}}
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory(prefix="unetdist-bench-") as d:
        shards = write_shards(Path(d), n, size)
        torch.set_num_threads(1)
        try:
            for w in workers:
                cfg = bench_config(data_overrides(crop, batch, w, steps + warmup)
                                   + [f"model.width={width}", "model.depth=3"])
                out["workers"][str(w)] = wait_fraction(trainer_run(cfg, shards), steps, warmup)
        finally:
            torch.set_num_threads(threads)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")
    p.add_argument("--json", help="also write the result to this file")
    p.add_argument("--worker", choices=tuple(PRECISIONS), help=argparse.SUPPRESS)
    for name in ("size", "width", "depth", "batch", "steps"):
        p.add_argument(f"--{name}", type=int, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        rows = step_worker(a.worker, a.size, a.width, a.depth, a.batch, a.steps, warmup=1)
        Path(a.out).write_text(json.dumps(rows))
        return 0
    res = bench_train_step(a.quick)
    for r in res["rows"]:
        print(f"batch {r['batch']} {r['precision']} channels_last={r['channels_last']}: "
              f"{r['img_per_s']:.2f} img/s")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
