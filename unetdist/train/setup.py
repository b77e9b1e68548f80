"""Everything before the first step: accelerator, model/optimizer/scheduler, resume, run dir.

`setup_run` returns the `Run` the loop in `unetdist.train.loop` works on. The reads that decide
whether and from where to resume happen on every rank before any rank writes, so all ranks
reach the same decision (or raise the same error) without a collective.
"""

from __future__ import annotations

import errno
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from unetdist.config import DataConfig, RunConfig, TrainConfig, to_dict, to_yaml
from unetdist.data.classes import ClassTable
from unetdist.data.manifest import (
    MANIFEST,
    check_fold,
    class_table,
    manifest_hash,
    read_manifest,
    split_entries,
    split_names,
)
from unetdist.data.stage.node import check_data_paths
from unetdist.distributed import gather_objects, make_accelerator, resolve_precision
from unetdist.errors import ConfigError, DataError, FileSystemError, UserError
from unetdist.log import say, warn
from unetdist.models.registry import apply_runtime_options, build_model, compile_model
from unetdist.runfolder import RECORDS_CAP, open_run_file
from unetdist.track.jsonl import METRICS_FILE, Tracker, open_tracker
from unetdist.track.runinfo import run_info, write_run_config
from unetdist.train import checkpoint as ckpt
from unetdist.train.budget import TimeBudget
from unetdist.train.checkpoint import TrainState
from unetdist.train.class_fit import adopt_classes, check_classes
from unetdist.train.compile_cache import with_cache_repair
from unetdist.train.ema import ModelEma
from unetdist.train.losses import build_loss
from unetdist.train.optim import SchedulerState, build_optimizer, build_scheduler
from unetdist.train.resume import plan_resume
from unetdist.train.runlock import RunLock
from unetdist.train.threads import ThreadTuner


@dataclass
class Run:
    """Everything the loop's steps share."""

    cfg: RunConfig
    acc: object  # accelerate.Accelerator
    run_dir: Path
    shard_dir: str
    manifest_hash: str
    has_val: bool
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    loss_fn: object
    state: TrainState
    budget: TimeBudget | None = None  # train.max_minutes; None in hand-built test runs
    ema: ModelEma | None = None  # train.ema_decay > 0: the averaged weights
    tracker: Tracker | None = None
    forward: torch.nn.Module | None = None  # what the step calls: compiled(DDP(model)) or model
    lock: RunLock | None = None  # rank 0's hold on run_dir (None on other ranks)
    threads: ThreadTuner | None = None  # fit's thread policy, restored on resume
    last_save_time: float = field(default_factory=time.monotonic)
    last_saved_step: int = -1
    plotted_at: float = field(default_factory=time.monotonic)  # plots/loss.png: validation.py
    plot_stale: bool = False  # a validation since the last draw
    parts: list[ckpt.Part] = field(default_factory=list)  # what a checkpoint holds: see setup
    table: ClassTable = field(default_factory=ClassTable.binary)  # the shards' class table
    before_step: Callable[[], None] = lambda: None  # extension point (test fault injection)


# ----------------------------------------------------------------------------- setup


def apply_backend_switches(cfg: TrainConfig) -> None:
    """cuDNN autotuning and TF32, both process-wide; no effect without CUDA.

    Training shapes are fixed (crop x batch), so benchmark mode's one-off search pays back at
    once; evaluation tiles are fixed too. TF32 only changes fp32 matmuls/convs (precision=no):
    about 10 mantissa bits, the same trade every bf16 run already makes.
    """
    torch.backends.cudnn.benchmark = cfg.cudnn_benchmark
    torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
    torch.backends.cudnn.allow_tf32 = cfg.tf32


def accelerator_kwargs(cfg: RunConfig) -> dict:
    """kwargs_handlers for the Accelerator: process-group timeout and DDP settings.

    - timeout: dist.timeout_s for every collective (NCCL's default is 10 min, gloo's 30);
      staging happens before the group exists, so only a hung rank should ever reach it.
    - gradient_as_bucket_view: gradients are views into DDP's all-reduce buckets (no copy per
      step, one gradient-sized buffer less).
    - broadcast_buffers=False: with True, DDP broadcasts rank 0's BatchNorm statistics before
      every forward. Training-mode BatchNorm uses batch statistics, so that only matters for
      evaluation and export: `validate` broadcasts rank 0's buffers first, and checkpoints
      and best/ hold rank 0's; rank 0's running statistics are the same either way (it never
      receives any).
    - comm_hook: dist.grad_compression=bf16 all-reduces gradients in bf16 (half the bytes
      between nodes), decompressed before the optimizer.
    """
    from datetime import timedelta

    from accelerate.utils import (
        DDPCommunicationHookType,
        DistributedDataParallelKwargs,
        InitProcessGroupKwargs,
    )

    hook = (DDPCommunicationHookType.BF16 if cfg.dist.grad_compression == "bf16"
            else DDPCommunicationHookType.NO)
    ddp = DistributedDataParallelKwargs(gradient_as_bucket_view=True, broadcast_buffers=False,
                                        bucket_cap_mb=cfg.dist.bucket_mb, comm_hook=hook)
    pg = InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.dist.timeout_s))
    return {"kwargs_handlers": [ddp, pg]}


def _check_grad_compression(cfg: RunConfig) -> None:
    if cfg.dist.grad_compression != "none" and not torch.cuda.is_available():
        raise ConfigError(f"dist.grad_compression must be none without CUDA (a NCCL hook), "
                          f"got {cfg.dist.grad_compression!r}")


def training_accelerator(cfg: RunConfig):
    """The trainer's Accelerator: the shared factory plus the DDP/process-group settings.

    cfg.train.precision must be resolved already (`fit` does it once, before staging).
    """
    _check_grad_compression(cfg)
    apply_backend_switches(cfg.train)
    return make_accelerator(cfg.train.precision, cfg.train.grad_accum,
                            **accelerator_kwargs(cfg))


def validate_run(cfg: RunConfig) -> tuple[RunConfig, str]:
    """Every check `train` makes before staging, and all that `train --check` makes (launch
    scripts run it in one process, so it must refuse whatever a rank would refuse).

    Returns the config with its precision resolved (the job's one decision: auto -> bf16|no;
    fp16 without CUDA is an error) and the shard folder training will read.
    """
    cfg = replace(cfg, train=replace(cfg.train,
                                     precision=resolve_precision(cfg.train.precision)))
    _check_grad_compression(cfg)
    _check_folder(cfg.train.run_dir, "train.run_dir", "write to the run folder")
    records = Path(cfg.train.run_dir) / METRICS_FILE  # rank 0 reads it later, alone: all check
    if records.exists() or records.is_symlink():
        open_run_file(records, RECORDS_CAP).close()
    if cfg.data.local_dir and cfg.data.stage:
        _check_folder(cfg.data.local_dir, "data.local_dir", "stage into")
    folder = check_data_paths(cfg.data)
    source = Path(cfg.data.shared_dir if cfg.data.local_dir and cfg.data.stage else folder)
    manifest = read_manifest(source)  # what staging copies: the same folds and splits
    check_fold(manifest, cfg.data.fold, source / MANIFEST)
    if not split_entries(manifest, "train", cfg.data.fold):  # resampling serves any rank count
        have = ", ".join(split_names(manifest, cfg.data.fold)) or "none"
        fold = f" with data.fold={cfg.data.fold}" if cfg.data.fold >= 0 else ""
        raise DataError(f"{source / MANIFEST}: no shards for split 'train'{fold} (it has: {have})")
    cfg, note = adopt_classes(cfg, manifest)
    if note:
        say(note)
    check_classes(cfg, manifest)
    return cfg, folder


def _check_folder(path: str, setting: str, doing: str) -> None:
    """A folder SETTING names can be made: neither it nor a parent is a file."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise FileSystemError.of(OSError(errno.EEXIST, "File exists"), path, doing, setting)


def setup_run(cfg: RunConfig, acc, shard_dir: str, threads: ThreadTuner | None = None) -> Run:
    manifest = read_manifest(shard_dir)
    check_fold(manifest, cfg.data.fold, Path(shard_dir) / MANIFEST)
    check_classes(cfg, manifest)  # also for callers that skip validate_run (bench, tests)
    if not cfg.eval.ref_fov_diameter:  # stored with the model, for eval.scale=auto later
        # the model sees training images at data.scale: that is the diameter it learnt at
        ref = float(manifest.get("fov_diameter", {}).get("train", 0.0)) * cfg.data.scale
        cfg = replace(cfg, eval=replace(cfg.eval, ref_fov_diameter=ref))
    run_dir = Path(cfg.train.run_dir)
    mhash = manifest_hash(manifest, cfg.data.fold)
    lock = take_run_lock(acc, run_dir)  # before anything reads or writes the run folder
    try:
        run = _setup_locked(cfg, acc, shard_dir, manifest, run_dir, mhash, threads)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    run.lock = lock
    return run


def take_run_lock(acc, run_dir: Path) -> RunLock | None:
    """Rank 0 takes the run folder's lock; every rank raises the same error when it cannot."""
    lock, error, note = None, None, None
    if acc.is_main_process:
        lock = RunLock(run_dir)
        try:
            note = lock.acquire()
        except UserError as e:
            error = str(e)
    error = gather_objects(error)[0]
    if error:
        raise UserError(error)
    if note:
        warn(note)
    return lock


def _setup_locked(cfg: RunConfig, acc, shard_dir: str, manifest: dict, run_dir: Path,
                  mhash: str, threads: ThreadTuner | None) -> Run:
    resume_from = plan_resume(cfg, acc, run_dir, mhash)
    acc.wait_for_everyone()  # every rank has read the run dir before rank 0 writes to it
    if acc.is_main_process:
        prepare_run_dir(cfg, acc, run_dir)
    budget = TimeBudget(cfg.train.max_minutes, cfg.train.max_steps, acc.is_main_process)
    model, optimizer, scheduler, forward = build_training_objects(cfg, acc, budget)
    has_val = cfg.eval.split in split_names(manifest, cfg.data.fold)
    run = Run(cfg, acc, run_dir, shard_dir, mhash, has_val, model, optimizer, scheduler,
              build_loss(cfg.loss), TrainState(steps_per_epoch=cfg.data.steps_per_epoch),
              forward=forward, budget=budget, threads=threads)
    run.table = class_table(manifest)
    if cfg.train.ema_decay > 0:
        run.ema = ModelEma(acc.unwrap_model(model), cfg.train.ema_decay)
    run.parts = checkpoint_parts(run)
    if resume_from is not None:
        ckpt.load_checkpoint(acc, resume_from, run.parts)
        run.last_saved_step = run.state.step
        say(f"resuming from {resume_from}")
    run.tracker = open_tracker(cfg, run_dir, is_main=acc.is_main_process,
                               run_id=run.state.run_id or None, resume_step=run.state.step)
    run.state.run_id = run.tracker.run_id or run.state.run_id
    acc.wait_for_everyone()
    return run


def checkpoint_parts(run: Run) -> list[ckpt.Part]:
    """What a checkpoint holds besides accelerate's state, one entry per piece of state (the
    budget is None in hand-built test runs, the EMA without train.ema_decay, the thread tuner
    outside `fit`)."""
    identity = ckpt.RunIdentity(run.manifest_hash, run.acc.num_processes, to_dict(run.cfg))
    parts = [run.state, identity, run.budget, SchedulerState(run.scheduler), run.ema,
             run.threads]
    return [p for p in parts if p is not None]


def prepare_run_dir(cfg: RunConfig, acc, run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        removed = ckpt.clean_stale(run_dir)
        ckpt.clear_preempted(run_dir)  # this start is the requeued job the marker asked for
        write_run_config(run_dir, to_yaml(cfg), run_info(acc.num_processes, cfg.train.precision))
    except OSError as e:
        raise FileSystemError.of(e, run_dir, "write to the run folder", "train.run_dir") from None
    if removed:
        names = ", ".join(str(p.relative_to(run_dir)) for p in removed)
        warn(f"removed {len(removed)} temporary file(s)/folder(s) an interrupted run left in "
             f"{run_dir}: {names}")


def build_training_objects(cfg: RunConfig, acc, budget: TimeBudget):
    """Model, optimizer, scheduler, and the module the training step calls.

    The model is compiled after `prepare()` wraps it in DDP (DDP's optimizer splits the graph
    at bucket boundaries, so gradient all-reduce overlaps backward); accelerate only knows the
    uncompiled module, so checkpoints never carry `_orig_mod.` and validation, export and
    `get_state_dict` use the eager model (no recompiles for eval mode or tile shapes).
    """
    from accelerate.utils import set_seed


    set_seed(cfg.seed)  # identical initial weights on every rank
    model = apply_runtime_options(build_model(cfg.model), cfg.model,
                                  distributed=acc.num_processes > 1, compile=False)
    optimizer = build_optimizer(model.parameters(), cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, cfg.train.max_steps,
                                progress=budget.time_fraction)
    # the scheduler is neither prepared (it would step once per process) nor registered for
    # checkpointing (accelerate would pickle it): it is saved as scheduler.json
    model, optimizer = acc.prepare(model, optimizer)
    set_seed(cfg.seed, device_specific=True)  # per-rank random streams from here on
    return model, optimizer, scheduler, with_cache_repair(compile_model(model, cfg.model))


def announce(run: Run) -> None:
    cfg, acc = run.cfg, run.acc
    b, n, ga = cfg.data.batch_size, acc.num_processes, cfg.train.grad_accum
    backend = "single process" if n == 1 else "nccl" if acc.device.type == "cuda" else "gloo"
    say(f"unetdist train: {n} process(es) on {acc.device.type} ({backend}), precision "
        f"{cfg.train.precision}; {run.budget.describe()}; global batch = {b} per process x "
        f"{n} processes x {ga} accumulation = {b * n * ga}; run_dir {run.run_dir}")
    if run.state.step:
        e, p = divmod(run.state.batches, cfg.data.steps_per_epoch)
        say(f"resumed at step {run.state.step} (epoch {e}, batch {p}) -> {cfg.train.max_steps}")
    warn_cpu_shortage(cfg, acc)
    warn_shm_shortage(cfg, acc)
    if not run.has_val:
        warn(f"the shards have no '{cfg.eval.split}' split: no validation; the final weights "
             "are exported as best/")


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))  # what the cgroup/cpuset allows, not the host
    except AttributeError:
        return os.cpu_count() or 1


def warn_cpu_shortage(cfg: RunConfig, acc) -> str | None:
    """One warning per node when its cores cannot serve every rank and its loader workers.

    Under SLURM without --cpus-per-task a task gets one core: 8 ranks and 48 workers would
    then share it, and the job would look like a slow GPU.
    """
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    # data.cache: a worker only crops and augments (< 1% of a core measured with the CPU
    # recipe), so a process's workers share one core; uncached, each worker decodes on its own
    workers = min(cfg.data.num_workers, 1) if cfg.data.cache else cfg.data.num_workers
    need, have = local * (1 + workers), usable_cpus()
    if have >= need or acc.local_process_index != 0:
        return None
    msg = (f"{have} usable CPU(s) on this node for {local} training process(es) x (1 + "
           f"{workers} for data.num_workers={cfg.data.num_workers}) = {need}: request more "
           f"cores (SLURM: --cpus-per-task) or lower data.num_workers")
    print(f"warning: {msg}", file=sys.stderr, flush=True)  # every node's local rank 0
    return msg


PREFETCH = 2  # batches each loader worker keeps ready (data.pipeline's DataLoader)
FULL_SIDE = 584  # data.crop=0 and no resize: a DRIVE image's long side, squared (a bound)


def shm_need(data: DataConfig, processes: int) -> int:
    """Bytes of /dev/shm the loader workers of `processes` training processes fill at most.

    A worker's batch reaches its trainer through shared memory: image float32 (B, C, h, w),
    label and FOV uint8 (B, 1, h, w); each worker keeps PREFETCH batches ready. The view is
    data.resize when set, else the crop (as `data.augment.view_size` decides).
    """
    side = data.resize or data.crop or FULL_SIDE
    batch = data.batch_size * side * side * (4 * data.in_channels + 1 + 1)
    return processes * data.num_workers * PREFETCH * batch


def warn_shm_shortage(cfg: RunConfig, acc, shm: str = "/dev/shm") -> str | None:
    """One warning per node when /dev/shm has no room for the batches in flight (Docker's
    default /dev/shm is 64 MB): `unetdist doctor` checks the same need, `shm_need`."""
    import shutil

    if not cfg.data.num_workers or acc.local_process_index != 0:
        return None
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    need = shm_need(cfg.data, local)
    try:
        free = shutil.disk_usage(shm).free
    except OSError:
        return None
    if free >= need:
        return None
    msg = (f"{shm} has {free / 2**20:.0f} MiB free but {local} process(es) x data.num_workers="
           f"{cfg.data.num_workers} x {PREFETCH} prefetched batches need ~{need / 2**20:.0f} "
           "MiB: loader workers may die with a bus error (Docker: --shm-size; or lower "
           "data.num_workers)")
    print(f"warning: {msg}", file=sys.stderr, flush=True)
    return msg
