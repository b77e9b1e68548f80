"""Time budget bookkeeping and the time-following LR schedule (no training here)."""

from __future__ import annotations

import math

import pytest

from unetdist.config import OptimConfig, load_config
from unetdist.errors import ConfigError
from unetdist.train.budget import TimeBudget
from unetdist.train.optim import lr_factor


def test_only_rank_0s_clock_counts_and_the_agreed_value_decides():
    main, other = TimeBudget(1.0, 100, is_main=True), TimeBudget(1.0, 100, is_main=False)
    for b in (main, other):
        b.start_step()
    assert other.agreed_clock() == 0.0 and main.agreed_clock() >= 0.0
    for b in (main, other):  # what the step's all-reduce hands every rank
        b.set_agreed(59.0)
        b.end_step()
    assert not main.exhausted() and not other.exhausted()
    assert main.done(99) is False and main.done(100) is True  # step limit
    for b in (main, other):
        b.set_agreed(60.0)
    assert main.done(5) and other.done(5)  # time limit, identical on both ranks
    assert main.time_fraction() == other.time_fraction() == 1.0


def test_no_budget_means_steps_only():
    b = TimeBudget(0.0, 10, is_main=True)
    b.set_agreed(1e9)
    assert not b.exhausted() and b.time_fraction() == 0.0 and not b.done(9) and b.done(10)


def test_spent_time_survives_a_checkpoint():
    b = TimeBudget(2.0, 10, is_main=True)
    b.start_step()
    b.end_step()
    b.set_agreed(30.0)
    saved = b.state_dict()
    fresh = TimeBudget(2.0, 10, is_main=True)
    fresh.load_state_dict(saved)
    assert fresh.spent_s == saved["spent_s"] >= 0.0
    fresh.load_state_dict({"spent_s": 90.0})
    assert fresh.time_fraction() == pytest.approx(0.75)
    fresh.start_step()
    assert fresh.agreed_clock() >= 90.0  # rank 0 continues from what was spent


def test_time_schedule_follows_the_further_of_steps_and_time():
    cfg = OptimConfig(schedule="cosine", warmup_steps=2, min_lr_ratio=0.1, schedule_by="time")
    cos = lambda t: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))
    assert lr_factor(1, cfg, 1000, lambda: 0.9) == pytest.approx(1.0)  # warm-up by steps
    assert lr_factor(10, cfg, 1000, lambda: 0.5) == pytest.approx(cos(0.5))
    assert lr_factor(10, cfg, 1000, lambda: 1.0) == pytest.approx(0.1)  # floor when time is up
    assert lr_factor(1000, cfg, 1000, lambda: 0.2) == pytest.approx(0.1)  # or steps are
    assert lr_factor(10, cfg, 1000, lambda: 2.0) == pytest.approx(0.1)  # never below the floor


def test_budget_settings_are_validated_by_name():
    with pytest.raises(ConfigError, match="train.max_minutes"):
        load_config(None, ["train.max_minutes=-1"])
    with pytest.raises(ConfigError, match="optim.schedule_by"):
        load_config(None, ["optim.schedule_by=time"])  # no budget to follow
    with pytest.raises(ConfigError, match="optim.schedule_by"):
        load_config(None, ["optim.schedule_by=epochs", "train.max_minutes=1"])
    cfg = load_config(None, ["optim.schedule_by=time", "train.max_minutes=0.5"])
    assert cfg.train.max_minutes == 0.5 and cfg.optim.schedule_by == "time"


def test_auto_precision_resolves_to_what_the_cpu_has(monkeypatch):
    import torch

    from unetdist import distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert load_config(None, ["train.precision=auto"]).train.precision == "auto"
    for native, expected in ((True, "bf16"), (False, "no")):
        monkeypatch.setattr(distributed, "cpu_has_bf16", lambda n=native: n)
        assert distributed.resolve_precision("auto") == expected
