"""The thread policy on the CPU recipe's own settings: the old rule vs the trainer's measured one.

    python -m unetdist.bench.threads [--quick] [--json out.json]

One training process with `configs/drive_cpu.yaml` as shipped (crop, batch, loader workers,
cache, augmentation, model, precision) on 18 synthetic DRIVE-sized images, the trainer's stream
(`run_batches`) and step (`train_step`), under two policies:

- old: torch threads = usable cores - loader workers (the rule before issue 23);
- new: the trainer's `ThreadTuner` (`unetdist.train.threads`): every core of the process's share
  at start, re-chosen from the workers' and other programs' measured CPU after the first steps.
  Its window passes during the untimed warm-up, so the timed steps run with its choice.

Reported per policy: steps/s, img/s and the data-wait share (time blocked in the stream over
step time); then new/old. Both run in this one invocation, in alternating order over ROUNDS
rounds, each keeping its best round, so a burst of other work on the machine skews the ratio
less. Full run: about 3 minutes on a quiet 2-core box (an estimate: ~100 recipe steps
per round at 1-1.7 steps/s, plus writing the shards). --quick: tiny crops and model, one
round, a shortened tuner window (a smoke run: figures not meaningful).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from itertools import islice
from pathlib import Path

from unetdist.bench.train import write_shards
from unetdist.bench.trainer import stream, timed_step, trainer_run
from unetdist.train.preempt import PreemptionFlag
from unetdist.train.threads import ThreadTuner, affinity, choose_threads, usable_cpus

RECIPE = "drive_cpu.yaml"
DRIVE_SIDE, DRIVE_TRAIN = 584, 18  # DRIVE's long side; its training images minus 2 for val


def recipe_config(shard_dir: str, quick: bool):
    """The CPU recipe as `unetdist train` loads it, on SHARD_DIR (quick: tiny crops and UNet)."""
    from unetdist.config import load_config
    from unetdist.distributed import resolve_precision
    from unetdist.resources import resource

    small = ["data.crop=48", "data.batch_size=4", "model.width=8", "model.depth=3"]
    cfg = load_config(resource("configs", RECIPE), [
        f"data.shared_dir={shard_dir}", "track.wandb.mode=disabled",
        "optim.schedule_by=steps", *(small if quick else [])])  # no budget here: by steps
    return dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, precision=resolve_precision(cfg.train.precision)))


def old_threads(usable: int, workers: int) -> int:
    """The policy before issue 23: loader workers get cores of their own."""
    return max(1, usable - workers)


def timed_policy(cfg, shard_dir: str, tuner: ThreadTuner | None, steps: int,
                 warmup: int) -> dict:
    """Steps/s and data-wait share over STEPS, after WARMUP steps and the tuner's decision."""
    run, flag = trainer_run(cfg, shard_dir), PreemptionFlag(signals=())
    batches, wait, compute, timed, i = stream(run), 0.0, 0.0, 0, 0
    try:
        while timed < steps:
            if tuner is not None:
                tuner()
            t0 = time.perf_counter()
            micro = list(islice(batches, cfg.train.grad_accum))
            t1 = time.perf_counter()
            timed_step(run, micro, flag)
            i += 1
            if i > warmup and (tuner is None or tuner.done):
                wait += t1 - t0
                compute += time.perf_counter() - t1
                timed += 1
    finally:
        batches.close()  # stops the loader's workers
    secs = wait + compute
    return {"steps_per_s": steps / secs, "img_per_s": steps * cfg.data.batch_size / secs,
            "wait_fraction": wait / secs, "untimed_steps": i - steps}


def run_policy(name: str, cfg, shard_dir: str, quick: bool, steps: int, warmup: int) -> dict:
    import torch

    workers, usable = cfg.data.num_workers, usable_cpus()
    tuner = None
    if name == "old":
        torch.set_num_threads(old_threads(usable, workers))
    else:
        choice = choose_threads(False, workers, env={}, usable=usable)  # the policy, not $OMP
        torch.set_num_threads(choice.threads)
        window = {"start": 2, "steps": 3, "seconds": 0.5} if quick else {}
        tuner = ThreadTuner(choice, affinity(), report=lambda s: None, **window)
    r = timed_policy(cfg, shard_dir, tuner, steps, warmup)
    r.update(policy=name, threads=torch.get_num_threads())
    if tuner is not None and tuner.loads is not None:
        r["measured_cores"] = {"loader workers": tuner.loads[0], "other programs": tuner.loads[1]}
    return r


def run_benchmark(quick: bool = False, rounds: int | None = None,
                  steps: int | None = None) -> dict:
    import torch

    steps, warmup = steps or (4 if quick else 40), 1 if quick else 5
    rounds = rounds or (1 if quick else 2)
    before = torch.get_num_threads()
    best: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="unetdist-bench-") as d:
        side, n = (64, 4) if quick else (DRIVE_SIDE, DRIVE_TRAIN)
        shards = write_shards(Path(d), n, side)
        cfg = recipe_config(shards, quick)
        try:
            for i in range(rounds):
                for name in ("old", "new") if i % 2 == 0 else ("new", "old"):
                    r = run_policy(name, cfg, shards, quick, steps, warmup)
                    if name not in best or r["steps_per_s"] > best[name]["steps_per_s"]:
                        best[name] = r
        finally:
            torch.set_num_threads(before)
    d = cfg.data
    return {"recipe": RECIPE, "usable_cpus": usable_cpus(), "workers": d.num_workers,
            "image": side, "crop": d.crop, "batch": d.batch_size, "cache": d.cache,
            "model": f"{cfg.model.name} width {cfg.model.width} depth {cfg.model.depth}",
            "precision": cfg.train.precision, "steps": steps, "rounds": rounds,
            "rows": [best["old"], best["new"]],
            "ratios": {"new vs old policy (steps/s)":
                       best["new"]["steps_per_s"] / best["old"]["steps_per_s"]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny crops and model: a smoke run")
    ap.add_argument("--json", help="also write the result to this file")
    a = ap.parse_args()
    res = run_benchmark(a.quick)
    for r in res["rows"]:
        print(f"{r['policy']:4s} {r['threads']} thread(s)  {r['steps_per_s']:6.2f} steps/s  "
              f"data wait {r['wait_fraction']:.3f}  {r.get('measured_cores', '')}")
    print(f"new / old: {res['ratios']['new vs old policy (steps/s)']:.2f}x")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
