"""Crash-safe writes: readers see the old file (or folder) or the new one, never half of either.

The only temp+rename code in the package: files written by us (`write_atomic`) or by a library
that wants a path (`atomic_file`: safetensors, matplotlib, onnx, a shard copy), and whole
folders (`atomic_dir`, `replace_dir`).

Nothing is written through a symlink we did not create: a temporary file is created afresh
(O_EXCL | O_NOFOLLOW, whatever stood at its name is removed first) and a rename replaces a
symlink at the final name instead of following it. Output paths built from names that came
from elsewhere (shard keys, file names) go through `inside`; the folders a user names through
`writable_folder`, and their write errors through `user_writes`: one line, not a traceback.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from unetdist.errors import FileSystemError, UserError


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
    with atomic_file(path, durable=durable) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "wb") as f:
            write_bytes(f, raw)


def write_bytes(f, raw: bytes) -> None:
    """The one place file contents are written (tests inject a full disk here)."""
    f.write(raw)


def create_private(path: Path) -> None:
    """Create PATH as a new empty regular file of ours: whatever stood at the name (a planted
    symlink, a stale temporary) is removed, and O_EXCL | O_NOFOLLOW never follows a link."""
    path.unlink(missing_ok=True)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o666))


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
    ours = tmp is None  # a caller's own temporary (staging's resumable .part) is its business
    tmp = tmp or temp_sibling(path)
    try:
        if ours:
            create_private(tmp)
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


def inside(folder: str | Path, name: str) -> Path:
    """FOLDER/NAME for a NAME that came from elsewhere (a shard key, a file name); UserError
    unless it is one plain file name whose resolved place is directly in FOLDER."""
    base = os.path.realpath(folder)
    target = os.path.normpath(os.path.join(base, name))
    plain = bool(name) and name not in (".", "..") and "/" not in name and "\0" not in name
    if not plain or os.path.dirname(target) != base:
        shown = repr(name) if len(name) <= 80 else repr(name[:77]) + "..."
        raise UserError(f"refused to write {shown} in {folder}: not a plain file name, it "
                        "would land outside that folder")
    return Path(folder) / name


@contextmanager
def user_writes(path: str | Path, doing: str, setting: str = "") -> Iterator[None]:
    """Writes into a place the user chose: an OSError becomes one FileSystemError line."""
    try:
        yield
    except OSError as e:
        raise FileSystemError.of(e, path, doing, setting) from None


def writable_folder(folder: str | Path, setting: str, doing: str = "write into") -> Path:
    """Create FOLDER if needed and prove it takes a file, before any long work: a file (or a
    link to one), a read-only or full file system is one FileSystemError line naming SETTING."""
    folder = Path(folder)
    if folder.is_symlink() and not folder.is_dir() or folder.exists() and not folder.is_dir():
        kind = "a symlink to a file (or to nothing)" if folder.is_symlink() else "a file"
        raise FileSystemError(f"cannot {doing} {folder} ({setting}): it is {kind}, not a "
                              f"folder; choose another {setting}")
    with user_writes(folder, doing, setting):
        folder.mkdir(parents=True, exist_ok=True)
        probe = temp_sibling(folder / ".write-probe")
        create_private(probe)
        probe.unlink()
    return folder
