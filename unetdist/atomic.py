"""Crash-safe file writes: readers see the old file or the new one, never half of either."""

from __future__ import annotations

import os
import threading
from pathlib import Path


def fsync_path(path: Path) -> None:
    """Flush a file (or a folder's entries) to disk before it is published by a rename."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | Path, data: bytes | str, *, durable: bool = False) -> None:
    """Write DATA to PATH through a temporary sibling and one rename.

    `durable` also fsyncs the file and its folder, for markers that must survive a power loss
    (staging manifests, checkpoint pointers); plain run outputs only need the rename.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # pid + thread: concurrent writers (staging threads, several ranks) never share a temp name
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as f:
            f.write(raw)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_path(path.parent)
