"""One training per run folder: an exclusive lock rank 0 holds for the whole job.

Two trainings on one `train.run_dir` (a requeued job and a manual relaunch, say) would resume
from each other's checkpoints and mix their outputs. Rank 0 takes a `filelock.FileLock`
(flock: the kernel drops it when the holder dies, however it dies) on `run_dir/.unetdist.lock`
before anything is written, and records who holds it in `.unetdist.lock.json` so that a second
training can name the holder. A record left behind without a lock is a holder that died without
releasing: it is taken over with a warning.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from unetdist.atomic import write_atomic
from unetdist.errors import FileSystemError, UserError
from unetdist.runfolder import read_run_text

LOCK_FILE = ".unetdist.lock"
HOLDER_FILE = ".unetdist.lock.json"


def _describe(holder: dict | None) -> str:
    if not holder:
        return "a process that left no record"
    return (f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, started "
            f"{holder.get('started', '?')}")


def _read_holder(run_dir: Path) -> dict | None:
    try:  # a run-folder file: a FIFO or a device there must not hang the start
        holder = json.loads(read_run_text(run_dir / HOLDER_FILE, 4096))
    except (UserError, ValueError, RecursionError):
        return None
    return holder if isinstance(holder, dict) else None


class RunLock:
    """The run folder's lock; `acquire` raises UserError naming the holder when it is taken."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self._lock = None

    def acquire(self) -> str | None:
        """Take the lock without waiting; returns a warning when a stale record was taken over."""
        from filelock import FileLock, Timeout

        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            lock = FileLock(str(self.run_dir / LOCK_FILE))
            try:
                lock.acquire(timeout=0)
            except Timeout:
                raise UserError(
                    f"train.run_dir={self.run_dir} is in use by another training "
                    f"({_describe(_read_holder(self.run_dir))}); wait for it to end, stop it, "
                    "or choose another train.run_dir") from None
            previous = _read_holder(self.run_dir)
            me = {"host": socket.gethostname(), "pid": os.getpid(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
            write_atomic(self.run_dir / HOLDER_FILE, json.dumps(me) + "\n")
        except OSError as e:
            raise FileSystemError.of(e, self.run_dir, "write to the run folder",
                                     "train.run_dir") from None
        self._lock = lock
        if previous is None:
            return None
        return (f"took over the lock of {self.run_dir} from a training that ended without "
                f"releasing it ({_describe(previous)})")

    def release(self) -> None:
        if self._lock is None:
            return
        try:
            (self.run_dir / HOLDER_FILE).unlink(missing_ok=True)
        except OSError:
            pass  # the record then names a holder that is gone: the next start says so
        self._lock.release()
        self._lock = None
