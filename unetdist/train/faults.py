"""Test-only fault injection, driven by the UNETDIST_FAULT environment variable.

`install_faults(run, flag)` wraps the run's loss, gradient clipping and step start from the
outside when a fault is configured, so the training step itself carries no test hooks.

Examples: `nan_loss:rank=1:step=3` (that rank's loss becomes NaN at optimizer step 3),
`save_crash:step=4` (the checkpoint of step 4 raises after every rank wrote its files),
`inf_grad:step=2` (every rank's gradients overflow after a finite loss),
`stall:step=5` (every rank sleeps before step 5 until a preemption signal arrives, so a test can
signal or kill a run at a known point), `worker_stall:batch=2` (the loader worker making global
batch 2 sleeps for ever, for the data.stall_seconds watchdog). Several faults are separated by commas. Unset in
normal use: then every query is a cheap dictionary miss.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, Protocol

from unetdist.train.preempt import PreemptionFlag

ENV = "UNETDIST_FAULT"


class Faultable(Protocol):
    """What `install_faults` wraps: the parts of `train.setup.Run` it touches (a structural
    type, so that this module, which `train.checkpoint` imports, never imports setup)."""

    acc: Any
    state: Any  # .step: optimizer steps completed
    loss_fn: Callable
    before_step: Callable[[], None]


def _parse(spec: str) -> list[tuple[str, dict[str, int]]]:
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        kind, *args = item.split(":")
        out.append((kind, {k: int(v) for k, v in (a.split("=", 1) for a in args)}))
    return out


def fault(kind: str, *, step: int, rank: int = 0) -> bool:
    """True when UNETDIST_FAULT asks for `kind` at this step on this rank."""
    spec = os.environ.get(ENV)
    if not spec:
        return False
    for name, where in _parse(spec):
        if name == kind and where.get("step", step) == step and where.get("rank", rank) == rank:
            return True
    return False


def worker_stall_batch(rank: int = 0) -> int | None:
    """The global batch whose loader worker `worker_stall` hangs on this rank (None: none)."""
    for name, where in _parse(os.environ.get(ENV) or ""):
        if name == "worker_stall" and where.get("rank", rank) == rank:
            return where["batch"]
    return None


def install_faults(run: Faultable, flag: PreemptionFlag) -> None:
    """Wrap the run's loss, clipping and step start with the faults UNETDIST_FAULT asks for."""
    if not os.environ.get(ENV):
        return
    rank = run.acc.process_index

    def step_no() -> int:  # the optimizer step being computed
        return run.state.step + 1

    loss_fn, clip = run.loss_fn, run.acc.clip_grad_norm_

    def faulty_loss(*args):
        loss = loss_fn(*args)
        return loss * float("nan") if fault("nan_loss", step=step_no(), rank=rank) else loss

    def faulty_clip(params, *args, **kw):
        params = list(params)
        if fault("inf_grad", step=step_no(), rank=rank):
            next(p for p in params if p.grad is not None).grad.fill_(float("inf"))
        return clip(params, *args, **kw)

    def stall() -> None:  # wait before step N until a signal (tests kill/signal here)
        if fault("stall", step=step_no(), rank=rank):
            deadline = time.monotonic() + 600
            while not flag.requested and time.monotonic() < deadline:
                time.sleep(0.05)

    run.loss_fn, run.before_step = faulty_loss, stall
    run.acc.clip_grad_norm_ = faulty_clip
