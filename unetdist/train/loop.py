"""The training loop: `fit()` is a skeleton of named steps; each step is a small function below.

Distributed semantics (DESIGN.md §4-§5): data is staged before the process group exists; the
webdataset stream is never passed through `accelerator.prepare()` (each rank reads its own
explicitly seeded stream and we move batches to the device); the LR scheduler is stepped once
per optimizer step; what a checkpoint holds is the list `run.parts` (`train.checkpoint`). The step itself (and its one
agreement all-reduce, the step's only host sync) is `unetdist.train.step`. One loader serves
the whole run (`batch_stream`); the preemption flag is polled at every step end, inside
validation and before every checkpoint.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from unetdist.config import RunConfig
from unetdist.data.pipeline import DataStall, run_batches, start_worker_server
from unetdist.data.stage.node import resolve_data_dir
from unetdist.errors import UserError
from unetdist.log import progress, rank_say, say
from unetdist.train import checkpoint as ckpt
from unetdist.train.faults import install_faults, worker_stall_batch
from unetdist.train.preempt import PreemptionFlag
from unetdist.train.setup import (
    Run,
    announce,
    setup_run,
    training_accelerator,
    validate_run,
)
from unetdist.train.step import StepStats, stand_in, train_step
from unetdist.train.threads import apply_thread_policy
from unetdist.train.validation import export_best, preempt_agreed, refresh_plot, validate


class DataStallError(UserError):
    """A loader made no batch for data.stall_seconds: stopped like a preemption, but exit 3."""

    exit_code = 3


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    preempted: bool
    best_dice: float | None
    best_step: int | None
    model: torch.nn.Module  # the trained network (unwrapped from DDP)
    interrupted: bool = False  # stopped by Ctrl-C (checkpoint saved): the command exits 130


# ----------------------------------------------------------------------------- the skeleton


def fit(cfg: RunConfig) -> TrainResult:
    """Train `cfg` to `train.max_steps` (or until preempted); resume per `train.resume`."""
    # the checks `train --check` makes, and the job's one precision decision: config.yaml,
    # checkpoints and the Accelerator all get its answer
    cfg, _ = validate_run(cfg)
    threads, tuner = apply_thread_policy(torch.cuda.is_available(), cfg.data.num_workers, say)
    if cfg.data.num_workers:
        start_worker_server()  # its imports overlap staging and setup
    with PreemptionFlag() as flag:  # from the start: a signal while staging is not fatal either
        shard_dir = resolve_data_dir(cfg.data)  # staging before the process group: no timeouts
        acc = training_accelerator(cfg)
        run = setup_run(cfg, acc, shard_dir, threads=tuner)
        install_faults(run, flag)  # test-only; a no-op unless UNETDIST_FAULT is set
        run.before_step = tuner.chain(run.before_step)  # re-chooses threads after a few steps
        announce(run)
        say(threads)
        try:
            result = train_loop(run, flag)
            refresh_plot(run, final=True)
            finish(run, result)
        finally:
            run.tracker.finish()
            acc.end_training()
            if run.lock is not None:  # last: every write of the job is done
                run.lock.release()
    return result


def check_only(cfg: RunConfig) -> str:
    """`train --check`: exactly the validation `fit` runs before staging (`validate_run`), in
    one process, so that a launch script refuses what every rank would refuse."""
    cfg, folder = validate_run(cfg)
    return f"ok: config valid; data {folder}; run_dir {cfg.train.run_dir}"


def train_loop(run: Run, flag: PreemptionFlag) -> TrainResult:
    cfg, st = run.cfg, run.state
    bar = progress_bar(run)
    window: list[StepStats] = []
    stream, last = batch_stream(run), None
    try:
        while not is_last(run):
            run.before_step()
            if run.budget:
                run.budget.start_step()
            t0 = time.perf_counter()
            micro, stall = next_batches(stream, cfg.train.grad_accum)
            waited = time.perf_counter() - t0
            if stall and run.acc.num_processes == 1:
                stop_for_stall(run, stall)
            micro = [*micro, *[stand_in(run, last)] * (cfg.train.grad_accum - len(micro))]
            last = micro[-1]
            stats = train_step(run, micro, flag, stalled=stall is not None)
            if stats.stalled:
                stop_for_stall(run, stall)
            stats.data_wait, stats.seconds = waited, stats.seconds + waited
            st.step += 1
            if run.budget:
                run.budget.end_step()
            log_step(run, stats, window, bar)
            if stats.preempt and not is_last(run):
                return stop_for_preemption(run, flag)
            if validation_due(run) and validate(run, flag) is None:
                return stop_for_preemption(run, flag)  # a signal came during validation
            if checkpoint_due(run, stats):
                if preempt_agreed(run, flag) and not is_last(run):
                    return stop_for_preemption(run, flag)  # saves this step, then exits
                save(run)
    finally:
        stream.close()
        bar.close()
    return result_of(run, preempted=False)


def is_last(run: Run) -> bool:
    """The run ends after this step: max_steps or the time budget, whichever first."""
    if run.budget is None:
        return run.state.step >= run.cfg.train.max_steps
    return run.budget.done(run.state.step)


def finish(run: Run, result: TrainResult) -> None:
    if result.preempted:
        return
    if result.step < run.cfg.train.max_steps:
        say(f"time budget reached: train.max_minutes={run.cfg.train.max_minutes:g} after "
            f"{result.step} of {run.cfg.train.max_steps} steps")
    if not run.has_val:  # no validation split, no "best": export the final weights as best/
        export_best(run, {"note": f"no '{run.cfg.eval.split}' split: final weights"})
    best = "n/a" if result.best_dice is None else f"{result.best_dice:.4f}"
    what = ("FOV Dice" if run.table.is_binary else "mean label Dice" if run.table.is_multilabel
            else "mean foreground Dice")  # what picked best/ (validation.py)
    say(f"done: step {result.step}, best val {what} {best} (step {result.best_step}), "
        f"run_dir {run.run_dir}")


# ----------------------------------------------------------------------------- one step


def batch_stream(run: Run) -> Iterator[dict]:
    """The rank's batches from the current stream position on: one loader for the whole run."""

    cfg, acc = run.cfg, run.acc
    return run_batches(cfg.data, run.shard_dir, seed=cfg.seed, rank=acc.process_index,
                       world_size=acc.num_processes, start_batch=run.state.batches,
                       hang_at=worker_stall_batch(acc.process_index))  # test-only fault


def next_batches(stream: Iterator[dict], n: int) -> tuple[list[dict], str | None]:
    """The step's N micro-batches, or those that came and the stall's one line."""
    micro: list[dict] = []
    try:
        while len(micro) < n:
            micro.append(next(stream))
    except DataStall as e:
        return micro, str(e)
    return micro, None


def stop_for_stall(run: Run, line: str | None) -> None:
    """Every rank: checkpoint the last completed step (if any), then one error line, exit 3.

    A stalled rank of several says its own line first: only rank 0 prints the error."""
    step, several = run.state.step, run.acc.num_processes > 1
    if line and several:
        rank_say(line, file=sys.stderr)
    if step > 0:
        save(run)  # a no-op when this step is saved already (a resumed run)
    done = (f"checkpoint of step {step} saved; run the same command to resume" if step
            else "no step taken, nothing saved")
    raise DataStallError(f"{line}; {done}" if line and not several
                         else f"a data loader stalled (its rank said which); {done}")


# ----------------------------------------------------------------------------- bookkeeping


def progress_bar(run: Run):
    """tqdm on a terminal; otherwise (SLURM .out files) a full line every train.log_seconds."""

    cfg = run.cfg.train
    return progress(cfg.max_steps, desc="train", unit="step", initial=run.state.step,
                    enabled=cfg.progress, every_s=cfg.log_seconds)


def log_step(run: Run, stats: StepStats, window: list[StepStats], bar) -> None:
    window.append(stats)
    secs = sum(s.seconds for s in window)
    ips = sum(s.images for s in window) / secs if secs > 0 else 0.0
    bar.set_postfix(loss=f"{stats.loss:.4f}", lr=f"{stats.lr:.2e}", img_s=f"{ips:.1f}",
                    refresh=False)
    bar.update(1)
    st, cfg = run.state, run.cfg
    # every log_every steps, and every log_seconds of steps: a slow run still gets curves
    if st.step % cfg.train.log_every and secs < cfg.train.log_seconds and not is_last(run):
        return
    record = {"split": "train", "loss": sum(s.loss for s in window) / len(window),
              "lr": stats.lr, "grad_norm": stats.grad_norm, "img_per_s": ips,
              "data_wait": sum(s.data_wait for s in window) / secs if secs > 0 else 0.0,
              "epoch": st.batches / cfg.data.steps_per_epoch}
    if run.budget is not None:  # training seconds so far, resumes included: the report's rate
        record["train_s"] = run.budget.spent_s
    if torch.cuda.is_available():
        record["gpu_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    run.tracker.log(record, st.step)
    window.clear()


def validation_due(run: Run) -> bool:
    every, step = run.cfg.train.eval_every, run.state.step
    return run.has_val and (is_last(run) or (every > 0 and step % every == 0))


def checkpoint_due(run: Run, stats: StepStats) -> bool:
    every, step = run.cfg.checkpoint.every_steps, run.state.step
    return (is_last(run) or stats.clock_due
            or (every > 0 and step % every == 0))


def save(run: Run) -> Path | None:
    """Checkpoint this step (collective): accelerate's state plus every part in `run.parts`."""
    if run.last_saved_step == run.state.step:
        return None
    t0 = time.perf_counter()
    path = ckpt.save_checkpoint(run.acc, run.run_dir, run.state.step, run.parts,
                                run.cfg.checkpoint.keep_last)
    run.last_save_time, run.last_saved_step = time.monotonic(), run.state.step
    say(f"saved {path.name} ({time.perf_counter() - t0:.1f} s)")
    return path


def stop_for_preemption(run: Run, flag: PreemptionFlag) -> TrainResult:
    step = run.state.step
    save(run)
    if flag.interrupted:  # Ctrl-C: the user's stop, no requeue marker; one line for the job
        say(f"stopped at step {step}; checkpoint saved; run the same command to resume",
            file=sys.stderr)
        result = result_of(run, preempted=True)
        result.interrupted = True
        return result
    if run.acc.is_main_process:
        ckpt.write_preempted(run.run_dir, step)
    # no rank exits before the marker exists: under `srun --kill-on-bad-exit=1` the first
    # launcher to exit (accelerate's exits 1 after a forwarded signal) ends every node's step
    run.acc.wait_for_everyone()
    why = ", ".join(sorted(set(flag.received))) or "signal on another rank"
    rank_say(f"preempted ({why}); checkpoint of step {step} saved, exiting")
    return result_of(run, preempted=True)


def result_of(run: Run, preempted: bool) -> TrainResult:
    st = run.state
    return TrainResult(run.run_dir, st.step, preempted, st.best_dice, st.best_step,
                       run.acc.unwrap_model(run.model))
