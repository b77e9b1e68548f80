"""Optimizers and learning-rate schedules, built from `cfg.optim`.

The schedule is a pure function of the optimizer step (`lr_factor`), wrapped in a LambdaLR.
The trainer steps it once per optimizer step itself: handing it to `accelerator.prepare()`
would step it once per process per step. Its state (last step, base lrs) is checkpointed
through `accelerator.register_for_checkpointing`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

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

    # a plain function, not a callable object: LambdaLR's state_dict then stores no config,
    # so the checkpoint loads with weights_only=True
    def factor(step: int) -> float:
        return lr_factor(step, cfg, max_steps, progress)

    return LambdaLR(optimizer, factor)
