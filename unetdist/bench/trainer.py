"""The trainer's own run, built for a bench section, and `train_step` timed on `run_batches`.

A bench section builds nothing of its own: the config goes through `load_config` (defaults,
checks, derived fields), the model, optimizer, scheduler and the module the step calls come
from `unetdist.train.setup.build_training_objects` (so `model.compile` and
`model.channels_last` act exactly as in training), batches from the trainer's stream
`run_batches`, and every timed step is `unetdist.train.step.train_step` (forward/backward,
clipping, the agreement collective with its one host sync, optimizer and scheduler step).
"""

from __future__ import annotations

import time
from itertools import islice
from pathlib import Path

from unetdist.config import RunConfig, load_config
from unetdist.data.pipeline import run_batches
from unetdist.train.budget import TimeBudget
from unetdist.train.checkpoint import TrainState
from unetdist.train.losses import build_loss
from unetdist.train.preempt import PreemptionFlag
from unetdist.train.setup import Run, build_training_objects, training_accelerator
from unetdist.train.step import train_step


def bench_config(overrides: list[str]) -> RunConfig:
    """A RunConfig from dotted overrides, as `unetdist train` would build it (no tracker)."""
    return load_config(None, ["track.wandb.mode=disabled", *overrides])


def trainer_run(cfg: RunConfig, shard_dir: str = "", run_dir: Path | None = None) -> Run:
    """The objects `fit()` trains with, without a run folder (nothing is saved or tracked)."""
    acc = training_accelerator(cfg)
    budget = TimeBudget(0.0, cfg.train.max_steps, acc.is_main_process)  # no time limit
    model, opt, sched, forward = build_training_objects(cfg, acc, budget)
    return Run(cfg, acc, Path(run_dir or "."), shard_dir, "", False, model, opt, sched,
               build_loss(cfg.loss), TrainState(), forward=forward, budget=budget)


def timed_step(run: Run, micro_batches: list[dict], flag: PreemptionFlag) -> float:
    """Seconds of one `train_step` (its read-back of the agreed values waits for the device)."""
    stats = train_step(run, micro_batches, flag)
    run.state.step += 1  # as fit() counts it
    return stats.seconds


def stream(run: Run):
    """The trainer's stream for RUN, from its current position (what `fit()` reads)."""
    cfg, acc = run.cfg, run.acc
    return run_batches(cfg.data, run.shard_dir, seed=cfg.seed, rank=acc.process_index,
                       world_size=acc.num_processes, start_batch=run.state.batches)


def wait_fraction(run: Run, steps: int, warmup: int) -> dict:
    """Seconds blocked in next(stream) vs in `train_step`, over STEPS after WARMUP steps."""
    flag, batches = PreemptionFlag(signals=()), stream(run)
    accum, wait, compute = run.cfg.train.grad_accum, 0.0, 0.0
    try:
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            micro = list(islice(batches, accum))
            t1 = time.perf_counter()
            timed_step(run, micro, flag)
            if i >= warmup:
                wait, compute = wait + t1 - t0, compute + time.perf_counter() - t1
    finally:
        batches.close()  # stops the loader's workers
    images = steps * accum * run.cfg.data.batch_size
    return {"wait_s": wait, "compute_s": compute, "wait_fraction": wait / (wait + compute),
            "img_per_s": images / (wait + compute)}
