"""Preemption signals: the handler only records that a signal came.

SLURM (`--signal=USR1@N`) or a scheduler's SIGTERM asks the job to stop soon. Doing anything
inside a signal handler (I/O, collectives) is unsafe, and ranks receive signals at different
moments, so the handler sets a flag; the trainer polls it at step boundaries and all ranks agree
through a collective before they save the same step. Signals that arrive while the checkpoint
is being written just set the flag again: they are ignored, never fatal.

Ctrl-C (SIGINT) is the user's stop and works the same way: checkpoint at the next step
boundary, then exit 130 telling how to resume. The first Ctrl-C says so at once, from the
handler itself (one `os.write` to stderr, async-signal safe; global rank 0 only, so a launcher
forwarding it to every rank prints one line). A second Ctrl-C aborts at once (KeyboardInterrupt:
the half-written checkpoint stays under its temporary name and is removed at the next start).
Under `accelerate launch` the terminal's Ctrl-C reaches the launcher, which sends SIGINT to
every worker and kills them `TORCH_ELASTIC_SHUTDOWN_TIMEOUT` seconds later.

Under `accelerate launch` the workers only see SIGUSR1 when the launcher forwards it
(`PET_SIGNALS_TO_HANDLE` must list it), and the launcher SIGKILLs them
`TORCH_ELASTIC_SHUTDOWN_TIMEOUT` seconds (30 by default) after forwarding: the checkpoint must
be written within that time (slurm/train.sbatch sets both).
"""

from __future__ import annotations

import os
import signal
from types import FrameType

SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
FIRST_CTRL_C = b"stopping at the next step; Ctrl-C again to abort\n"
_EXITS_AFTER_TRAINING = False  # set by the `unetdist train` command, never by a Python caller


def process_exits_after_training() -> None:
    """The `unetdist train` command's promise: the process ends once `fit` returns. After a
    preemption, late SIGTERM/SIGUSR1 then stay ignored up to the exit (a second SIGTERM after
    the checkpoint must not turn exit 0 into a kill); a Python caller of `fit` goes on with its
    own handlers back."""
    global _EXITS_AFTER_TRAINING
    _EXITS_AFTER_TRAINING = True


class PreemptionFlag:
    """Context manager installing flag-setting handlers for SIGUSR1, SIGTERM and SIGINT."""

    def __init__(self, signals: tuple = SIGNALS):
        self.signals = signals
        self.received: list[str] = []  # names of the signals received, in order
        self._previous: dict = {}
        self._says = os.environ.get("RANK", "0") in ("", "0")  # read now: not in the handler

    @property
    def requested(self) -> bool:
        return bool(self.received)

    @property
    def interrupted(self) -> bool:
        """The user pressed Ctrl-C (a stop, not a scheduler's preemption: no requeue)."""
        return "SIGINT" in self.received

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        if signum == signal.SIGINT and self.interrupted:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt  # the second Ctrl-C: abort now
        if signum == signal.SIGINT and self._says:
            try:
                os.write(2, FIRST_CTRL_C)
            except OSError:  # stderr closed: the stop itself must still happen
                pass
        self.received.append(signal.Signals(signum).name)

    def __enter__(self) -> PreemptionFlag:  # noqa: PYI034 (py3.10: no typing.Self)
        for s in self.signals:
            self._previous[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        linger = self.requested and _EXITS_AFTER_TRAINING  # see process_exits_after_training
        for s in self.signals:
            ignore = linger and s != signal.SIGINT  # Ctrl-C always works afterwards
            signal.signal(s, signal.SIG_IGN if ignore else self._previous[s])
