"""Optimizers and learning-rate schedules, built from `cfg.optim`.

The schedule is a pure function of the optimizer step (`lr_factor`), wrapped in a LambdaLR.
The trainer steps it once per optimizer step itself: handing it to `accelerator.prepare()`
would step it once per process per step. Nor is it registered with accelerate's
`register_for_checkpointing`: accelerate pickles such objects and loads them back with
`weights_only=False`, which would make a run folder code. Its state (last step, base lrs,
last lrs: numbers only) goes to `scheduler.json` in the checkpoint instead (`scheduler_state`,
`load_scheduler_state`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import torch
from torch.optim.lr_scheduler import LambdaLR

from unetdist.errors import DataError
from unetdist.runfolder import SCHEDULER_FILE

if TYPE_CHECKING:  # the registry owns names the config asks for: typing only, no circle
    from unetdist.config import OptimConfig


def _sgd(params: list, cfg: OptimConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay, nesterov=cfg.momentum > 0)


# the allowed optim.name values (config validation asks this table): Adam has L2 weight decay
# as the seed tutorial, AdamW decoupled decay
OPTIMIZERS: dict[str, Callable[[list, OptimConfig], torch.optim.Optimizer]] = {
    "adam": lambda ps, cfg: torch.optim.Adam(ps, lr=cfg.lr, weight_decay=cfg.weight_decay),
    "adamw": lambda ps, cfg: torch.optim.AdamW(ps, lr=cfg.lr, weight_decay=cfg.weight_decay),
    "sgd": _sgd,
}
SCHEDULES = ("constant", "cosine", "poly")  # lr_factor's shapes


def build_optimizer(params: Iterable[torch.nn.Parameter],
                    cfg: OptimConfig) -> torch.optim.Optimizer:
    """The optimizer named by `cfg.name` over the trainable parameters."""
    return OPTIMIZERS[cfg.name]([p for p in params if p.requires_grad], cfg)


def lr_factor(step: int, cfg: OptimConfig, max_steps: int,
              progress: Callable[[], float] | None = None) -> float:
    """Multiplier of `cfg.lr` for optimizer step `step` (0-based).

    Linear warm-up over `warmup_steps` (reaching the full lr at the last warm-up step), then
    constant, cosine or poly decay from 1 towards `min_lr_ratio`, reached just after the final
    step (so the last step still learns). With `progress` (optim.schedule_by=time: the share
    of the time budget spent, in [0, 1]) the decay follows whichever of the step and time
    fractions is further along, as the run ends on whichever limit comes first: a run that
    ends on its time budget still ends at the floor.
    """
    warm = cfg.warmup_steps
    if step < warm:
        return (step + 1) / warm
    if cfg.schedule == "constant":
        return 1.0
    t = min(1.0, (step - warm) / max(1, max_steps - warm))
    if progress is not None:
        t = max(t, min(1.0, progress()))
    lo = cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * t))
    return lo + (1.0 - lo) * (1.0 - t) ** cfg.poly_power


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, max_steps: int,
                    progress: Callable[[], float] | None = None) -> LambdaLR:
    """A LambdaLR following `lr_factor`; call `.step()` once after each optimizer step.

    `progress` (the share of the time budget spent) is used when `cfg.schedule_by` is time.
    """
    if cfg.schedule_by == "steps":
        progress = None
    elif progress is None:
        raise ValueError("optim.schedule_by=time needs the run's progress")

    # a plain function, not a callable object: LambdaLR's state_dict then stores no config
    # (lr_lambdas is [None]), so it is plain JSON
    def factor(step: int) -> float:
        return lr_factor(step, cfg, max_steps, progress)

    return LambdaLR(optimizer, factor)


def scheduler_state(scheduler: LambdaLR) -> dict:
    """The scheduler's state as JSON-safe data (numbers and lists; the lambdas are code)."""
    return {k: v for k, v in scheduler.state_dict().items() if k != "lr_lambdas"}


def load_scheduler_state(scheduler: LambdaLR, state: object, where: str) -> None:
    """Restore `scheduler_state` output; ValueError naming WHERE when it is not one."""
    ours = scheduler_state(scheduler)
    if not isinstance(state, dict) or set(state) != set(ours):
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"{where}: expected the keys {sorted(ours)}, got {got}")
    for k, v in state.items():
        if type(v) is not type(ours[k]) and not (isinstance(v, (int, float))
                                                 and isinstance(ours[k], (int, float))):
            raise ValueError(f"{where}: {k} must be a {type(ours[k]).__name__}, got {v!r}")
    if len(state["base_lrs"]) != len(ours["base_lrs"]):
        raise ValueError(f"{where}: {len(state['base_lrs'])} parameter groups, the optimizer "
                         f"has {len(ours['base_lrs'])}")
    scheduler.load_state_dict({**state, "lr_lambdas": [None] * len(state["base_lrs"])})


class SchedulerState:
    """The LR scheduler as a checkpoint part: scheduler.json, plain JSON (never pickled)."""

    name, file = "", SCHEDULER_FILE

    def __init__(self, scheduler: LambdaLR) -> None:
        self.scheduler = scheduler

    def state_dict(self) -> dict:
        return scheduler_state(self.scheduler)

    def load_state_dict(self, state: dict) -> None:
        try:
            load_scheduler_state(self.scheduler, state, SCHEDULER_FILE)
        except ValueError as e:
            raise DataError(str(e)) from None
