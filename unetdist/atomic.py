"""Crash-safe writes: readers see the old file (or folder) or the new one, never half of either.

The only temp+rename code in the package: files written by us (`write_atomic`) or by a library
that wants a path (`atomic_file`: safetensors, matplotlib, onnx, a shard copy), and whole
folders (`atomic_dir`, `replace_dir`).
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from unetdist.errors import UserError


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
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_file(path, durable=durable) as tmp, open(tmp, "wb") as f:
        f.write(raw)


def temp_sibling(path: Path) -> Path:
    # pid + thread: concurrent writers (staging threads, several ranks) never share a temp name
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")


@contextmanager
def atomic_file(path: str | Path, *, durable: bool = False, tmp: Path | None = None
                ) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces PATH in one rename.

    On any exception (or Ctrl-C) the temporary file is removed and PATH is untouched. `tmp`
    picks the temporary name (staging keeps partial copies in its own folder).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp or temp_sibling(path)
    try:
        yield tmp
        if durable:
            fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_path(path.parent)


def check_output_dir(out: Path, overwrite: bool) -> None:
    """Refuse to clobber a non-empty folder (or a file) unless asked to."""
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out} exists and is not empty (pass --force to replace it)")


@contextmanager
def atomic_dir(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `out`; on success it replaces `out` in one rename.

    On any exception (or Ctrl-C) the temporary folder is removed and `out` is untouched.
    """
    check_output_dir(out, overwrite)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)  # a leftover of a crashed run with our pid
    tmp.mkdir()
    try:
        yield tmp
        fsync_path(tmp)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(src: Path, dst: Path, *, old: Path | None = None) -> None:
    """Move `src` to `dst`; an existing `dst` is moved aside to `old` first, deleted after.

    Between the two renames only `old` exists: a caller that must survive a crash there passes
    a fixed `old` name it knows how to restore (checkpoint's best/).
    """
    old = old or dst.parent / f".{dst.name}.old-{os.getpid()}"
    if dst.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dst, old)
    os.replace(src, dst)
    fsync_path(dst.parent)
    shutil.rmtree(old, ignore_errors=True)
