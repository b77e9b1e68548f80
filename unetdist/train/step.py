"""One optimizer step: forward/backward over the micro-batches, clip, agree, step.

The step ends with one small all-reduce that carries the global loss, the gradient norm, the
non-finite flag, the preemption flag, the data-stall flag, rank 0's checkpoint clock and rank
0's training time (train.max_minutes), so all ranks take the same decisions at the same step.
A rank whose loader stalled (`data.stall_seconds`) still joins the step's collectives with a
stand-in batch (`stand_in`); every rank then discards the step (no update, batches not counted)
so the checkpoint written next is the previous step's (only the BatchNorm running statistics of a
healthy rank 0 keep that one discarded batch). Reading that vector back is the step's only host sync (bf16/fp32;
fp16's GradScaler adds its own): loss and norm stay on the device until then, and host values
travel to the device through pinned memory without blocking (tests/unit/test_host_syncs.py
counts them).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from unetdist.distributed import gather_objects, is_distributed, uses_grad_scaler
from unetdist.errors import UserError
from unetdist.train.preempt import PreemptionFlag
from unetdist.train.setup import Run


class NonFiniteError(UserError):
    """Training diverged: a NaN/inf loss or gradient norm (or too many fp16 overflow skips)."""


@dataclass
class StepStats:
    loss: float  # global mean loss of the step
    grad_norm: float
    lr: float
    images: int  # images this step processed across all ranks
    seconds: float
    preempt: bool  # some rank received a preemption signal
    clock_due: bool  # rank 0's every_minutes clock says checkpoint now
    nonfinite: bool  # some rank's loss was NaN/inf
    local_loss: torch.Tensor | None = None  # this rank's loss sum, on the device (read on error)
    stalled: bool = False  # some rank's loader stalled: the step was discarded on every rank
    data_wait: float = 0.0  # seconds this rank waited for its batches (included in seconds)


def train_step(run: Run, micro_batches: list[dict], flag: PreemptionFlag,
               stalled: bool = False) -> StepStats:
    """Forward/backward over the accumulation micro-batches, clip, agree, step.

    STALLED: this rank's micro-batches are stand-ins (its loader stalled); its BatchNorm
    buffers are restored afterwards and every rank discards the step."""
    acc, cfg = run.acc, run.cfg
    step_no, t0 = run.state.step + 1, time.perf_counter()
    run.model.train()
    buffers = [b.clone() for b in run.model.buffers()] if stalled else None
    forward = run.model if run.forward is None else run.forward  # compiled(DDP(model))
    loss_sum, images, keys = torch.zeros((), device=acc.device), 0, []
    for batch in micro_batches:
        with acc.accumulate(run.model):
            x, y, f = to_device(batch, acc.device, cfg.model.channels_last)
            loss = run.loss_fn(forward(x), y, f)
            acc.backward(loss)
        loss_sum += loss.detach()
        images += x.shape[0]
        keys += list(batch["key"])
        run.state.batches += 1
    norm = clip_gradients(run)
    stats = agree(run, loss_sum, norm, images, flag, stalled)  # the step's one host sync
    if stats.stalled:
        discard_step(run, len(micro_batches), buffers)
        return stats
    check_finite(run, stats, keys, step_no)
    stats.lr = run.optimizer.param_groups[0]["lr"]
    optimizer_step(run, step_no)
    if run.ema is not None:
        run.ema.update(acc.unwrap_model(run.model))
    stats.seconds = time.perf_counter() - t0
    return stats


def to_device(batch: dict, device: torch.device, channels_last: bool):
    """Non-blocking copies (the loader pins memory on CUDA); label/FOV stay uint8."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = batch["image"].to(device, non_blocking=True).contiguous(memory_format=fmt)
    return (x, batch["label"].to(device, non_blocking=True),
            batch["fov"].to(device, non_blocking=True))


def _to_device_async(values: list[float], device: torch.device) -> torch.Tensor:
    t = torch.tensor(values, dtype=torch.float64)
    if device.type == "cuda":
        t = t.pin_memory()  # a pageable source would make the copy synchronous
    return t.to(device, non_blocking=True)


def agree(run: Run, loss_sum: torch.Tensor, norm: torch.Tensor, images: int,
          flag: PreemptionFlag, stalled: bool = False) -> StepStats:
    """The step's one collective: global loss and norm, non-finite ranks, preemption, clock."""
    acc, n = run.acc, run.acc.num_processes
    minutes = run.cfg.checkpoint.every_minutes
    clock = (acc.is_main_process and minutes > 0
             and time.monotonic() - run.last_save_time >= minutes * 60)
    local = loss_sum.detach().double().reshape(1)
    finite = torch.isfinite(local)
    on_device = torch.cat([torch.where(finite, local, torch.zeros_like(local)),
                           (~finite).double(), norm.detach().double().reshape(1)])
    budget = run.budget.agreed_clock() if run.budget else 0.0  # rank 0's training seconds
    host = _to_device_async([float(flag.requested), float(clock), float(images), budget,
                             float(stalled)], acc.device)
    vec = torch.cat([on_device, host])
    if is_distributed():
        torch.distributed.all_reduce(vec)
    loss, bad, norm_sum, preempt, clock_due, total, spent, stall = vec.tolist()  # one read-back
    if run.budget:
        run.budget.set_agreed(spent)  # every rank decides the time limit on the same value
    return StepStats(loss=float("nan") if bad else loss / (n * run.cfg.train.grad_accum),
                     grad_norm=norm_sum / n, lr=0.0, images=int(total), seconds=0.0,
                     preempt=preempt > 0, clock_due=clock_due > 0, nonfinite=bad > 0,
                     local_loss=local, stalled=stall > 0)


def discard_step(run: Run, micro: int, buffers: list[torch.Tensor] | None) -> None:
    """Undo what a discarded step did on this rank: gradients, batch count, (stand-in) buffers."""
    run.optimizer.zero_grad(set_to_none=True)
    run.state.batches -= micro  # a resume replays this step's batches
    if buffers is not None:
        with torch.no_grad():
            for b, saved in zip(run.model.buffers(), buffers):
                b.copy_(saved)


def stand_in(run: Run, last: dict | None) -> dict:
    """A batch for a rank whose loader stalled, so it can join the step's collectives: its last
    batch, or zeros of the configured crop (its values never reach the weights)."""
    if last is not None:
        return last
    data = run.cfg.data
    side = data.crop or data.resize or 64
    zeros = torch.zeros((data.batch_size, 1, side, side), dtype=torch.uint8)
    return {"image": torch.zeros((data.batch_size, data.in_channels, side, side)),
            "label": zeros, "fov": zeros, "key": ["<stalled>"] * data.batch_size}


def check_finite(run: Run, stats: StepStats, keys: list[str], step_no: int) -> None:
    """Stop every rank at the same step on a NaN/inf loss (naming the batches) or grad norm."""
    after = f"training stopped, no checkpoint written after step {step_no - 1}"
    if stats.nonfinite:
        mine = not math.isfinite(float(stats.local_loss))  # error path: a sync is fine
        per_rank = gather_objects(keys if mine else None)
        where = "; ".join(f"rank {r}: {', '.join(k)}" for r, k in enumerate(per_rank) if k)
        raise NonFiniteError(f"non-finite loss at step {step_no} (batch keys {where}); {after}")
    if not uses_grad_scaler(run.acc) and not math.isfinite(stats.grad_norm):
        # identical on all ranks (gradients are all-reduced), so every rank stops here; under
        # fp16 an overflow is the scaler's to skip (max_skipped_steps)
        raise NonFiniteError(f"non-finite gradient norm ({stats.grad_norm}) at step {step_no}; "
                             f"{after}")


def clip_gradients(run: Run) -> torch.Tensor:
    """Clip to optim.grad_clip (0: measure only); the norm stays on the device."""
    max_norm = run.cfg.optim.grad_clip or float("inf")  # inf: measure the norm, scale by 1
    return run.acc.clip_grad_norm_(run.model.parameters(), max_norm)


def optimizer_step(run: Run, step_no: int) -> None:
    run.optimizer.step()
    skipped = run.acc.optimizer_step_was_skipped  # fp16 overflow: the scaler skipped it
    if not skipped:
        run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    st = run.state
    st.skipped_in_a_row = st.skipped_in_a_row + 1 if skipped else 0
    if st.skipped_in_a_row > run.cfg.train.max_skipped_steps:
        raise NonFiniteError(f"{st.skipped_in_a_row} consecutive fp16 overflow skips up to step "
                             f"{step_no} (train.max_skipped_steps="
                             f"{run.cfg.train.max_skipped_steps}); lower optim.lr or use bf16")
