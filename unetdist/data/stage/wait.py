"""Coordination of staging on one node: the DST file lock and the wait of non-copying ranks.

The copier (LOCAL_RANK 0, or `unetdist stage`) holds a `filelock.FileLock` on DST for the whole
stage, so independent jobs on the node serialise. The node's other ranks poll: each poll takes
the same lock briefly, so they never judge a copy that is being changed, and accept DST only
when its manifest equals the source manifest and every shard still matches its marker.

A failure of the copier is recorded in DST with a job token (host, parent process and its start
time, launcher restart count): local ranks of one launch are siblings under one launcher
(torchrun's agent, slurmstepd), so a waiter recognises its own job's failure however early it
was recorded, and ignores a stale one from another job. A note recorded after the waiter
started counts too (a copier that is no sibling).

SIGTERM and SIGINT end a waiting process at once (exit 143 / 130), a waiting rank and the
copier waiting for another job's lock alike: it holds nothing worth saving, and the trainer's
preemption handler, which only sets a flag, is replaced while it waits.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from unetdist.data.stage.copy import (
    MANIFEST,
    Shard,
    failure_path,
    lock_path,
    marker_matches,
    read_json_or_none,
    state_dir,
    write_atomic,
)
from unetdist.errors import DataError

POLL_S = 0.5  # how often waiting ranks look at DST
QUIET_S = 2.0  # lock wait before saying that another process is staging


class LockTimeout(DataError):
    """The DST lock was not acquired in time."""


@contextlib.contextmanager
def stage_lock(dst: Path, timeout: float | None, *, announce: str | None,
               exit_on_signal: bool = True) -> Iterator[bool]:
    """Hold the node-wide staging lock of DST; print ANNOUNCE once when it has to wait
    (yields whether it did).

    SIGTERM/SIGINT while waiting for the lock exit at once with 143/130 (EXIT_ON_SIGNAL; a
    caller that handles the signals itself passes False): under `train` the preemption
    handler only sets a flag, and the holder may keep the lock for an hour.
    """
    from filelock import FileLock

    state_dir(dst).mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path(dst)))
    waiting = f"waiting for the staging lock {lock_path(dst)}"
    with _exit_on_signals(waiting) if exit_on_signal else contextlib.nullcontext():
        announced = _acquire(lock, dst, timeout, announce)
    try:
        yield announced
    finally:
        lock.release()


def _acquire(lock, dst: Path, timeout: float | None, announce: str | None) -> bool:
    from filelock import Timeout

    quiet = QUIET_S if timeout is None else min(QUIET_S, max(timeout, 0.0))
    try:  # waiting ranks hold the lock for a moment per poll: not worth a message
        lock.acquire(timeout=quiet)
        return False
    except Timeout:
        if announce:
            print(announce, file=sys.stderr, flush=True)
        try:
            lock.acquire(timeout=-1 if timeout is None else max(timeout - quiet, 0.0))
        except Timeout:
            raise LockTimeout(f"timed out after {timeout:g}s waiting for the staging lock "
                              f"{lock_path(dst)} (another process is staging into {dst})") from None
    return bool(announce)


def is_complete(dst: Path, manifest: dict, shards: list[Shard]) -> bool:
    """DST holds this manifest and every shard is unchanged since it was verified."""
    if read_json_or_none(dst / MANIFEST) != manifest:
        return False
    return all(marker_matches(dst, s) for s in shards)


def job_token() -> str:
    """What the local ranks of one launch share: host, launcher pid + start time, restart."""
    ppid = os.getppid()
    try:  # field 22 of /proc/PID/stat, after the parenthesised command name
        start = Path(f"/proc/{ppid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        start = "?"
    restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return f"{socket.gethostname()}:{ppid}:{start}:{restart}"


def record_failure(dst: Path, error: BaseException) -> None:
    """Tell waiting ranks that this stage failed, so they stop waiting and say why."""
    note = {"time": time.time(), "job": job_token(),
            "error": str(error) or type(error).__name__}
    with contextlib.suppress(OSError):
        write_atomic(failure_path(dst), json.dumps(note).encode(), durable=True)


def clear_failure(dst: Path) -> None:
    failure_path(dst).unlink(missing_ok=True)


def _timeout_error(src: Path, dst: Path, timeout: float) -> DataError:
    return DataError(f"timed out after {timeout:g}s waiting for local rank 0 to stage {src} "
                     f"into {dst}: check local rank 0's log, or raise data.stage_timeout if the "
                     f"copy is just slow")


def _failure_of_this_job(dst: Path, token: str, since: float) -> str | None:
    """The recorded failure, when it is this job's (same token) or newer than SINCE."""
    note = read_json_or_none(failure_path(dst))
    if not isinstance(note, dict):
        return None
    recent = isinstance(note.get("time"), (int, float)) and note["time"] >= since
    if note.get("job") == token or recent:
        return str(note.get("error", "unknown error"))
    return None


class _Stopped(Exception):
    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGTERM/SIGINT raise _Stopped in the waiting loop (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise _Stopped(signum)

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def _exit_on_signals(what: str, who: str = "stage") -> Iterator[None]:
    """SIGTERM/SIGINT during the block: WHO says WHAT was interrupted and exits 143/130 at once."""
    try:
        with _stop_on_signals():
            yield
    except _Stopped as e:
        print(f"{who}: {signal.Signals(e.signum).name} while {what}; exiting", file=sys.stderr,
              flush=True)
        sys.stdout.flush()
        # Not SystemExit: tearing down an interpreter that imported torch takes seconds on a
        # busy node (4 s measured under load), and a waiting process holds nothing to save
        # (the kernel drops its flock; staging writes only under the lock it never got).
        os._exit(128 + e.signum)


def wait_for_stage(src: Path, dst: Path, manifest: dict, shards: list[Shard], timeout: float,
                   *, local_rank: int) -> None:
    """Block until local rank 0 has staged SRC into DST; DataError on timeout or its failure.

    SIGTERM/SIGINT exit at once with status 143/130.
    """
    with _exit_on_signals(f"waiting for local rank 0 to stage {dst}", f"local rank {local_rank}"):
        _wait(src, dst, manifest, shards, timeout, local_rank)


def _wait(src: Path, dst: Path, manifest: dict, shards: list[Shard], timeout: float,
          local_rank: int) -> None:
    token, since = job_token(), time.time()
    deadline = time.monotonic() + timeout
    note = f"local rank {local_rank}: waiting for local rank 0 to stage {src} into {dst}"
    announced = False
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _timeout_error(src, dst, timeout)
        try:  # a copy in progress holds the lock: say why we wait once it takes a while
            with stage_lock(dst, remaining, announce=None if announced else note,
                            exit_on_signal=False) as said:
                announced = announced or said
                if is_complete(dst, manifest, shards):
                    return
                failure = _failure_of_this_job(dst, token, since)
        except LockTimeout:
            raise _timeout_error(src, dst, timeout) from None
        if failure:
            raise DataError(f"local rank 0 failed to stage {src} into {dst}: {failure}")
        if not announced:
            print(note, file=sys.stderr, flush=True)
            announced = True
        time.sleep(min(POLL_S, max(deadline - time.monotonic(), 0.0)))
