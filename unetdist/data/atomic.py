"""Whole-folder outputs that appear complete or not at all: temp folder, fsync, rename."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from unetdist.atomic import fsync_path  # noqa: F401 - re-exported for the data package
from unetdist.errors import UserError


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
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _replace_dir(tmp: Path, out: Path) -> None:
    """Move `tmp` to `out`; an existing `out` is removed only after the new one is in place."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.replace(out, old)
    os.replace(tmp, out)
    fsync_path(out.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
