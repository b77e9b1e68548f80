"""Train-step throughput of the seed UNet (width 64, gray input) on CPU: 1 vs 2 DDP processes,
fp32 vs bf16.

    python -m unetdist.bench.ddp [--quick] [--size 256] [--steps 6] [--rounds 2] [--json out.json]

Each configuration runs the trainer's own `unetdist.train.step.train_step` (forward, FOV loss,
backward with DDP all-reduce over gloo, the per-step agreement collective, clipping, optimizer
and scheduler step) on in-memory batches (batch 1 per process, the seed recipe's), so data loading is not measured.
Every process gets one thread (OMP_NUM_THREADS=1): 2 processes use 2 cores. img/s counts the
images of all processes. The configurations run in ROUNDS rounds (alternating order) in this one
invocation and each keeps its best round, so a burst of other work on the machine skews the
ratios less; absolute figures still depend on whatever else the machine runs (see load_avg).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from unetdist.bench.train import synthetic_batch
from unetdist.bench.trainer import bench_config, trainer_run
from unetdist.train.preempt import PreemptionFlag
from unetdist.train.step import train_step

CONFIGS = [(1, "no"), (2, "no"), (1, "bf16"), (2, "bf16")]


def _worker(size: int, steps: int, warmup: int, precision: str, out: str) -> None:
    """One process of one configuration: time `steps` train steps after `warmup`."""
    cfg = bench_config(["data.channels=gray", "data.batch_size=1", "model.width=64",
                        f"train.precision={precision}"])
    run = trainer_run(cfg, run_dir=Path(out).parent)  # the trainer's DDP and process group
    acc = run.acc
    batch = synthetic_batch(1, size, seed=acc.process_index)
    flag = PreemptionFlag(signals=())
    for _ in range(warmup):
        train_step(run, [batch], flag)
    acc.wait_for_everyone()
    t0 = time.perf_counter()
    images = 0
    for _ in range(steps):
        images += train_step(run, [batch], flag).images
    acc.wait_for_everyone()
    seconds = time.perf_counter() - t0
    if acc.is_main_process:
        Path(out).write_text(json.dumps({"img_per_s": images / seconds, "seconds": seconds,
                                         "steps": steps, "images": images}))
    acc.end_training()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(nproc: int, precision: str, size: int, steps: int, warmup: int, tmp: Path) -> dict:
    out = tmp / f"r{nproc}-{precision}.json"
    worker = ["-m", "unetdist.bench.ddp", "--worker", "--size", str(size), "--steps",
              str(steps), "--warmup", str(warmup), "--precision", precision, "--out", str(out)]
    if nproc == 1:
        cmd = [sys.executable] + worker
    else:  # CPU DDP over gloo, as the dist tests launch it
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
               "--num_processes", str(nproc), "--num_machines", "1", "--mixed_precision", "no",
               "--dynamo_backend", "no", "--main_process_port", str(_free_port())] + worker
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp, timeout=1800,
                       check=False)
    if r.returncode != 0 or not out.exists():
        raise RuntimeError(f"benchmark worker failed ({nproc} proc, {precision}):\n"
                           f"{r.stderr[-3000:]}")
    return {"processes": nproc, "precision": precision, **json.loads(out.read_text())}


def _ratios(by: dict[tuple[int, str], float]) -> dict[str, float]:
    """2 vs 1 process per precision and bf16 vs fp32 per process count, where both were run."""
    pairs = {"ratio_2proc_vs_1proc_fp32": ((2, "no"), (1, "no")),
             "ratio_2proc_vs_1proc_bf16": ((2, "bf16"), (1, "bf16")),
             "ratio_bf16_vs_fp32_1proc": ((1, "bf16"), (1, "no")),
             "ratio_bf16_vs_fp32_2proc": ((2, "bf16"), (2, "no"))}
    return {k: by[a] / by[b] for k, (a, b) in pairs.items() if a in by and b in by}


def run_benchmark(quick: bool = False, size: int | None = None, steps: int | None = None,
                  rounds: int | None = None) -> dict:
    """All configurations in one run; returns figures and ratios (see module docstring).
    --quick (a smoke run of the code path) launches fp32 only: each launch starts up to three
    interpreters, which is most of the quick bench's time."""
    size = size or (64 if quick else 256)
    steps = steps or (2 if quick else 6)
    rounds = rounds or (1 if quick else 2)
    warmup = 1 if quick else 2
    configs = [c for c in CONFIGS if not quick or c[1] == "no"]
    load_start = os.getloadavg()
    best: dict = {}
    with tempfile.TemporaryDirectory() as d:
        for i in range(rounds):
            for n, p in (configs if i % 2 == 0 else configs[::-1]):
                r = _launch(n, p, size, steps, warmup, Path(d))
                if (n, p) not in best or r["img_per_s"] > best[(n, p)]["img_per_s"]:
                    best[(n, p)] = r
    rows = [best[c] for c in configs]
    by = {(r["processes"], r["precision"]): r["img_per_s"] for r in rows}
    return {"model": "unet width 64 depth 4 gray (seed recipe)", "size": size, "batch": 1,
            "steps": steps, "rounds": rounds, "threads_per_process": 1,
            "load_avg_start": load_start, "load_avg_end": os.getloadavg(), "results": rows,
            **_ratios(by)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="64 px, 2 steps, fp32 only: a smoke run")
    ap.add_argument("--size", type=int, default=None, help="image side in px (default 256)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per configuration")
    ap.add_argument("--rounds", type=int, default=None, help="rounds, best kept (default 2)")
    ap.add_argument("--json", help="also write the result to this file")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--warmup", type=int, default=2, help=argparse.SUPPRESS)
    ap.add_argument("--precision", default="no", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        _worker(a.size, a.steps, a.warmup, a.precision, a.out)
        return
    res = run_benchmark(a.quick, a.size, a.steps, a.rounds)
    for r in res["results"]:
        print(f"{r['processes']} proc  {r['precision']:>4}  {r['img_per_s']:7.2f} img/s")
    for k, v in res.items():
        if k.startswith("ratio_"):
            print(f"{k:28s} {v:.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
