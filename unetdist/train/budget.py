"""The training-time budget (`train.max_minutes`) and the fraction of the run that is done.

A run ends at `train.max_steps` or when `train.max_minutes` of *training* time are spent,
whichever comes first. Training time is the time of the optimizer steps, data waits included;
start-up, validation and checkpointing do not count, so a slow shared filesystem does not eat
the budget of the steps. Only rank 0's clock counts: it travels in the step's one collective
(`agreed_clock`/`set_agreed`), so every rank sees the same time, stops at the same step and
computes the same time-based learning rate. The time spent is checkpointed, so a resumed run
continues the budget rather than starting a new one.
"""

from __future__ import annotations

import time

from unetdist.runfolder import STATE_FILE


class TimeBudget:
    """Training seconds spent against `max_minutes` (0 = no time limit).

    A checkpoint part: its state is the "budget" key of trainer_state.json.
    """

    name, file = "budget", STATE_FILE

    def __init__(self, max_minutes: float, max_steps: int, is_main: bool) -> None:
        self.limit_s = max_minutes * 60.0
        self.max_steps = max_steps
        self.is_main = is_main
        self.spent_s = 0.0  # agreed training seconds: the same on every rank
        self._own_s = 0.0  # rank 0's own total of whole steps (what a checkpoint stores)
        self._t0: float | None = None

    def start_step(self) -> None:
        self._t0 = time.perf_counter()

    def _running(self) -> float:
        return 0.0 if self._t0 is None else time.perf_counter() - self._t0

    def agreed_clock(self) -> float:
        """This rank's contribution to the step's sum: rank 0's seconds so far, else 0."""
        return self._own_s + self._running() if self.is_main else 0.0

    def set_agreed(self, seconds: float) -> None:
        self.spent_s = seconds

    def end_step(self) -> None:
        self._own_s += self._running()
        self._t0 = None  # spent_s stays the agreed value: decisions must match on all ranks

    def exhausted(self) -> bool:
        return self.limit_s > 0 and self.spent_s >= self.limit_s

    def done(self, step: int) -> bool:
        """The run ends after `step`: the step limit or the time limit, whichever first."""
        return step >= self.max_steps or self.exhausted()

    def time_fraction(self) -> float:
        """The share of the time budget spent, in [0, 1] (0 without a budget)."""
        return min(1.0, self.spent_s / self.limit_s) if self.limit_s > 0 else 0.0

    def state_dict(self) -> dict:
        return {"spent_s": self._own_s if self.is_main else self.spent_s,
                "max_minutes": self.limit_s / 60.0}

    def load_state_dict(self, d: dict) -> None:
        self.spent_s = self._own_s = float(d.get("spent_s", 0.0))

    def describe(self) -> str:
        if self.limit_s <= 0:
            return f"{self.max_steps} steps"
        return (f"{self.max_steps} steps or {self.limit_s / 60:g} min of training "
                f"({self.spent_s / 60:.2f} min spent), whichever first")
