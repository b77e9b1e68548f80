"""Rank-aware console output: the one place that decides who prints what, and how progress looks.

Under `accelerate launch` every process runs the same code; a message about the whole job must
appear once (global rank 0), a message about one process names its rank. The rank comes from
torch.distributed when a group is running, else from the launcher's RANK variable, so output
is already right before the process group exists (staging, config errors).

Progress: on a terminal a tqdm bar (rank 0 only); when stderr is not a terminal (SLURM `.out`
files, CI logs) carriage-return bars turn into one endless line, so we print a full line every
`every_s` seconds instead, with seconds per unit below one unit per second, as tqdm shows.
`progress` and `progress_iter` are the project's one progress helper.

Python warnings raised alike by every rank are shown by global rank 0 only
(`one_warning_per_job`, installed by the Accelerator factory).
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Iterable, Iterator
from typing import Any, TextIO, TypeVar

import torch.distributed as dist
from tqdm import tqdm

T = TypeVar("T")


def rank() -> int:
    """Global rank of this process (0 without a launcher)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0") or 0)


def world_size() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_main() -> bool:
    return rank() == 0


def say(*parts: Any, file: TextIO | None = None) -> None:
    """A message about the whole job: printed once (global rank 0), flushed."""
    if is_main():
        print(*parts, file=file or sys.stdout, flush=True)


def warn(msg: str) -> None:
    """A job-wide warning on stderr, once per job."""
    if is_main():
        print(f"warning: {msg}", file=sys.stderr, flush=True)


def one_warning_per_job() -> None:
    """Hide, on every rank but global rank 0, the Python warnings that every rank raises alike:
    deprecations (e.g. DDP's `broadcast_buffers` FutureWarning, raised once per rank when
    accelerate wraps the model) and torch's and accelerate's UserWarnings about the code. A
    rank's own trouble goes through `rank_warn`, which these filters do not touch."""
    if rank() == 0:
        return
    for category in (DeprecationWarning, PendingDeprecationWarning, FutureWarning):
        warnings.filterwarnings("ignore", category=category)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(torch|accelerate)(\.|$)")


def rank_say(msg: str, *, file: TextIO | None = None) -> None:
    """A message about this process: every rank prints it, prefixed with the rank if several."""
    prefix = f"rank {rank()}: " if world_size() > 1 else ""
    print(prefix + msg, file=file or sys.stdout, flush=True)


def rank_warn(msg: str) -> None:
    """A warning about this process only (its shard, its file): every rank that sees it says so."""
    rank_say(f"warning: {msg}", file=sys.stderr)


class LineProgress:
    """tqdm's small interface, printing a full line every `every_s` seconds (non-TTY logs)."""

    def __init__(self, total: int | None, desc: str, unit: str, initial: int, every_s: float,
                 unit_scale: bool = False):
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.every_s, self.unit_scale = every_s, unit_scale
        self.postfix: dict[str, Any] = {}
        self._start = self._last = time.monotonic()
        self._start_n = initial

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self._emit(now)

    def set_postfix(self, refresh: bool = False, **kw: Any) -> None:
        self.postfix = kw

    def _fmt(self, v: float) -> str:
        if not self.unit_scale:
            return str(int(v))
        for suffix in ("", "k", "M", "G", "T"):
            if abs(v) < 1000:
                return f"{v:.1f}{suffix}"
            v /= 1000
        return f"{v:.1f}P"

    def _rate(self, rate: float) -> str:
        """Units per second, or seconds per unit below one per second (as tqdm does)."""
        if 0 < rate < 1:
            return f"{1 / rate:.1f} s/{self.unit}"
        return f"{self._fmt(rate) if self.unit_scale else f'{rate:.1f}'} {self.unit}/s"

    def _emit(self, now: float) -> None:
        done = self._fmt(self.n) + (f"/{self._fmt(self.total)}" if self.total else "")
        rate = (self.n - self._start_n) / max(now - self._start, 1e-9)
        extra = " ".join(f"{k}={v}" for k, v in self.postfix.items())
        print(f"{self.desc}: {done} {self.unit} ({self._rate(rate)}) {extra}".rstrip(),
              file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.n != self._start_n:
            self._emit(time.monotonic())

    def __enter__(self) -> LineProgress:  # noqa: PYI034 - no typing.Self on 3.10
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(total: int | None = None, *, desc: str, unit: str = "it", initial: int = 0,
             enabled: bool = True, every_s: float = 30.0, unit_scale: bool = False,
             all_ranks: bool = False):
    """A progress bar for long work: tqdm on a terminal, periodic full lines otherwise.

    Only global rank 0 shows it unless `all_ranks` (per-node work such as staging).
    """
    show = enabled and (all_ranks or is_main())
    if show and not sys.stderr.isatty():
        return LineProgress(total, desc, unit, initial, every_s, unit_scale)
    return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=not show,
                dynamic_ncols=True, unit_scale=unit_scale)


def progress_iter(items: Iterable[T], total: int | None = None, *, desc: str, unit: str = "it",
                  enabled: bool = True, every_s: float = 30.0) -> Iterator[T]:
    """`items`, advancing a `progress` bar by one per item (a tqdm(iterable) for log files)."""
    with progress(total, desc=desc, unit=unit, enabled=enabled, every_s=every_s) as bar:
        for item in items:
            yield item
            bar.update(1)
