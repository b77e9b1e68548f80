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


def lr_factor(step: int, cfg: OptimConfig, max_steps: int) -> float:
    """Multiplier of `cfg.lr` for optimizer step `step` (0-based).

    Linear warm-up over `warmup_steps` (reaching the full lr at the last warm-up step), then
    constant, cosine or poly decay from 1 towards `min_lr_ratio`, reached just after the final
    step (so the last step still learns).
    """
    warm = cfg.warmup_steps
    if step < warm:
        return (step + 1) / warm
    if cfg.schedule == "constant":
        return 1.0
    span = max(1, max_steps - warm)
    t = min(1.0, (step - warm) / span)
    lo = cfg.min_lr_ratio
    if cfg.schedule == "cosine":
        return lo + (1.0 - lo) * 0.5 * (1.0 + math.cos(math.pi * t))
    return lo + (1.0 - lo) * (1.0 - t) ** cfg.poly_power


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, max_steps: int) -> LambdaLR:
    """A LambdaLR following `lr_factor`; call `.step()` once after each optimizer step."""
    # a plain function, not a callable object: LambdaLR's state_dict then stores no config,
    # so the checkpoint loads with weights_only=True
    def factor(step: int) -> float:
        return lr_factor(step, cfg, max_steps)

    return LambdaLR(optimizer, factor)
