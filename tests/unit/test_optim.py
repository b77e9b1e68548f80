"""Optimizers and schedules: lr values per step, resume of the scheduler state."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch

from unetdist.config import OptimConfig
from unetdist.train.optim import (
    build_optimizer,
    build_scheduler,
    load_scheduler_state,
    lr_factor,
    scheduler_state,
)


def test_warmup_is_linear_and_reaches_the_peak():
    cfg = OptimConfig(schedule="constant", warmup_steps=4)
    assert [lr_factor(s, cfg, 100) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def test_cosine_goes_from_peak_to_min_just_after_the_last_step():
    cfg = OptimConfig(schedule="cosine", warmup_steps=2, min_lr_ratio=0.1)
    n = 12  # steps 0..11; decay over steps 2..12
    assert lr_factor(2, cfg, n) == pytest.approx(1.0)
    assert lr_factor(7, cfg, n) == pytest.approx(0.1 + 0.9 * 0.5)  # half way: mean of ends
    assert lr_factor(5, cfg, n) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.3)))
    assert lr_factor(n, cfg, n) == pytest.approx(0.1)
    values = [lr_factor(s, cfg, n) for s in range(2, n)]
    assert values == sorted(values, reverse=True) and values[-1] > 0.1


def test_poly_follows_its_power():
    cfg = OptimConfig(schedule="poly", poly_power=2.0, min_lr_ratio=0.0)
    n = 10  # t = step / 10
    for s in (0, 3, 5, 10):
        assert lr_factor(s, cfg, n) == pytest.approx((1 - s / 10) ** 2)


def _params():
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2).parameters()


@pytest.mark.parametrize("name,cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                      ("sgd", torch.optim.SGD)])
def test_optimizers_carry_the_config(name, cls):
    opt = build_optimizer(_params(), OptimConfig(name=name, lr=0.02, weight_decay=0.003))
    assert type(opt) is cls
    g = opt.param_groups[0]
    assert g["lr"] == 0.02 and g["weight_decay"] == 0.003
    if name == "sgd":
        assert g["momentum"] == 0.9


def _run(sched, opt, steps):
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_scheduler_steps_follow_lr_factor_and_resume_exactly():
    cfg = OptimConfig(name="adamw", lr=0.1, schedule="cosine", warmup_steps=3, min_lr_ratio=0.05)
    opt = build_optimizer(_params(), cfg)
    sched = build_scheduler(opt, cfg, 10)
    first = _run(sched, opt, 4)
    assert first == pytest.approx([0.1 * lr_factor(s, cfg, 10) for s in range(4)])
    # checkpoint the way the trainer does: scheduler as JSON, optimizer by accelerate's
    # torch.save + weights_only load
    saved_sched = json.dumps(scheduler_state(sched))
    buf_o = io.BytesIO()
    torch.save(opt.state_dict(), buf_o)
    rest = _run(sched, opt, 6)
    opt2 = build_optimizer(_params(), cfg)
    sched2 = build_scheduler(opt2, cfg, 10)
    buf_o.seek(0)
    opt2.load_state_dict(torch.load(buf_o, weights_only=True))
    load_scheduler_state(sched2, json.loads(saved_sched), "scheduler.json")
    assert _run(sched2, opt2, 6) == rest


def test_scheduler_state_that_is_not_ours_is_refused():
    cfg = OptimConfig()
    sched = build_scheduler(build_optimizer(_params(), cfg), cfg, 10)
    good = scheduler_state(sched)
    for bad in ([], {**good, "lr_lambdas": ["x"]}, {**good, "base_lrs": "0.1"},
                {**good, "base_lrs": [0.1, 0.2]}):
        with pytest.raises(ValueError, match="scheduler.json"):
            load_scheduler_state(sched, bad, "scheduler.json")
