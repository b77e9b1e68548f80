"""Coordination of staging on one node: the DST file lock and the wait of non-copying ranks.

The copier (LOCAL_RANK 0, or `unetdist stage`) holds a `filelock.FileLock` on DST for the whole
stage, so independent jobs on the node serialise. The node's other ranks poll: each poll takes
the same lock briefly, so they never judge a copy that is being changed, and accept DST only
when its manifest equals the source manifest and every shard still matches its marker.
"""

from __future__ import annotations

import contextlib
import json
import sys
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
def stage_lock(dst: Path, timeout: float | None, *, announce: str | None) -> Iterator[None]:
    """Hold the node-wide staging lock of DST; print ANNOUNCE once when it has to wait."""
    from filelock import FileLock, Timeout

    state_dir(dst).mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path(dst)))
    quiet = QUIET_S if timeout is None else min(QUIET_S, max(timeout, 0.0))
    try:  # waiting ranks hold the lock for a moment per poll: not worth a message
        lock.acquire(timeout=quiet)
    except Timeout:
        if announce:
            print(announce, file=sys.stderr, flush=True)
        try:
            lock.acquire(timeout=-1 if timeout is None else max(timeout - quiet, 0.0))
        except Timeout:
            raise LockTimeout(f"timed out after {timeout:g}s waiting for the staging lock "
                              f"{lock_path(dst)} (another process is staging into {dst})") from None
    try:
        yield
    finally:
        lock.release()


def is_complete(dst: Path, manifest: dict, shards: list[Shard]) -> bool:
    """DST holds this manifest and every shard is unchanged since it was verified."""
    if read_json_or_none(dst / MANIFEST) != manifest:
        return False
    return all(marker_matches(dst, s) for s in shards)


def record_failure(dst: Path, error: BaseException) -> None:
    """Tell waiting ranks that this stage failed, so they stop waiting and say why."""
    note = {"time": time.time(), "error": str(error) or type(error).__name__}
    with contextlib.suppress(OSError):
        write_atomic(failure_path(dst), json.dumps(note).encode(), durable=True)


def clear_failure(dst: Path) -> None:
    failure_path(dst).unlink(missing_ok=True)


def _timeout_error(src: Path, dst: Path, timeout: float) -> DataError:
    return DataError(f"timed out after {timeout:g}s waiting for local rank 0 to stage {src} "
                     f"into {dst}: check local rank 0's log, or raise data.stage_timeout if the "
                     f"copy is just slow")


def _failed_since(dst: Path, since: float) -> str | None:
    note = read_json_or_none(failure_path(dst))
    if note and isinstance(note.get("time"), (int, float)) and note["time"] >= since:
        return str(note.get("error", "unknown error"))
    return None


def wait_for_stage(src: Path, dst: Path, manifest: dict, shards: list[Shard], timeout: float,
                   *, local_rank: int) -> None:
    """Block until local rank 0 has staged SRC into DST; DataError on timeout or its failure."""
    since = time.time()
    deadline = time.monotonic() + timeout
    announced = False
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _timeout_error(src, dst, timeout)
        try:
            with stage_lock(dst, remaining, announce=None):
                if is_complete(dst, manifest, shards):
                    return
                failure = _failed_since(dst, since)
        except LockTimeout:
            raise _timeout_error(src, dst, timeout) from None
        if failure:
            raise DataError(f"local rank 0 failed to stage {src} into {dst}: {failure}")
        if not announced:
            print(f"local rank {local_rank}: waiting for local rank 0 to stage {src} into {dst}",
                  file=sys.stderr, flush=True)
            announced = True
        time.sleep(min(POLL_S, max(deadline - time.monotonic(), 0.0)))
