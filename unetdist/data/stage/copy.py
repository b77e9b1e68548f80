"""File primitives of staging: the DST layout, verified copies, markers, atomic writes.

DST layout: the shards and `manifest.json` (written last: its presence means complete), and a
`.stage/` folder holding the lock, one verification marker per shard (`verified/<name>.json`
with size, mtime and sha256) and the temporary files of copies in progress (`tmp/`).
Everything is written to a temporary name, fsynced and renamed, so a crash at any point leaves
either the old file or the new, complete one.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from unetdist.atomic import atomic_file, write_atomic
from unetdist.data import jsonsafe
from unetdist.errors import DataError

MANIFEST = "manifest.json"
STATE_DIR = ".stage"
CHUNK = 4 << 20  # large reads keep per-call overhead small; hashlib drops the GIL on them


@dataclass(frozen=True)
class Shard:
    """One shard as the manifest describes it."""

    name: str
    bytes: int
    sha256: str


class Cancelled(Exception):
    """Another copy failed; this one stops early (its temporary file is removed)."""


def state_dir(dst: Path) -> Path:
    return dst / STATE_DIR


def lock_path(dst: Path) -> Path:
    return state_dir(dst) / "lock"


def tmp_dir(dst: Path) -> Path:
    return state_dir(dst) / "tmp"


def marker_dir(dst: Path) -> Path:
    return state_dir(dst) / "verified"


def failure_path(dst: Path) -> Path:
    return state_dir(dst) / "failed.json"


def read_json_or_none(path: Path) -> dict | None:
    """A JSON object at PATH, or None when absent, unreadable, too big or too deep (stale)."""
    try:
        value = jsonsafe.read(path, max_bytes=jsonsafe.MANIFEST_BYTES)
    except DataError:
        return None
    return value if isinstance(value, dict) else None


# ----------------------------------------------------------------------------- markers


def marker_file(dst: Path, name: str) -> Path:
    return marker_dir(dst) / f"{name}.json"


def write_marker(dst: Path, shard: Shard) -> None:
    """Record that DST/name was verified against shard.sha256, as it is on disk now.

    Not fsynced one by one (two syncs per shard add up): a marker lost or emptied by a crash
    only costs a re-hash of that local file. The stage syncs the marker folder once at the end.
    """
    st = (dst / shard.name).stat()
    record = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": shard.sha256}
    write_atomic(marker_file(dst, shard.name), json.dumps(record).encode(), durable=False)


def marker_matches(dst: Path, shard: Shard) -> bool:
    """True when DST/name is unchanged since it was verified against this shard's sha256."""
    record = read_json_or_none(marker_file(dst, shard.name))
    try:
        st = (dst / shard.name).stat()
    except OSError:
        return False
    return (record is not None and record.get("sha256") == shard.sha256
            and record.get("size") == st.st_size == shard.bytes
            and record.get("mtime_ns") == st.st_mtime_ns)


def remove_marker(dst: Path, name: str) -> None:
    marker_file(dst, name).unlink(missing_ok=True)


# ----------------------------------------------------------------------------- hashing, copying


def hash_file(path: Path, on_bytes: Callable[[int], None]) -> str:
    """sha256 of PATH, reporting progress through ON_BYTES."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
            on_bytes(n)
    return h.hexdigest()


def _load_sync_file_range() -> Callable[[int, int, int], None]:
    """Linux sync_file_range(SYNC_FILE_RANGE_WRITE) via libc, else a no-op.

    Starting write-back of each chunk as soon as it is written overlaps the disk writes with
    the reads and hashing; without it the kernel holds the dirty pages until our fsync, which
    then waits for the whole file. (The os module does not expose this call.)
    """
    try:
        import ctypes

        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
        fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    except (OSError, AttributeError):
        return lambda fd, offset, n: None
    return lambda fd, offset, n: fn(fd, offset, n, 2)  # 2 = SYNC_FILE_RANGE_WRITE


start_writeback = _load_sync_file_range()


def _write_all(out, view: memoryview) -> None:
    while view:
        view = view[out.write(view):]


def _stream(src: Path, out, limit: int, on_bytes: Callable[[int], None],
            stop: threading.Event) -> tuple[int, str]:
    """Copy SRC into the unbuffered file OUT, hashing on the way; stops past LIMIT bytes."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    total = 0
    with open(src, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            if stop.is_set():
                raise Cancelled(src.name)
            h.update(view[:n])
            _write_all(out, view[:n])
            start_writeback(out.fileno(), total, n)
            total += n
            on_bytes(n)
            if total > limit:  # a growing or wrong source: no need to read it all
                break
    return total, h.hexdigest()


def copy_verified(src_dir: Path, dst: Path, shard: Shard, on_bytes: Callable[[int], None],
                  stop: threading.Event) -> None:
    """Copy one shard: read once, hash while writing to tmp/, fsync, check, rename, mark.

    Raises DataError naming the shard when the source is missing or does not match the
    manifest (never stage corrupted data). No temporary file survives an error.
    """
    src = src_dir / shard.name
    with atomic_file(dst / shard.name, tmp=tmp_dir(dst) / f"{shard.name}.part") as tmp:
        try:
            with open(tmp, "wb", buffering=0) as out:
                size, digest = _stream(src, out, shard.bytes, on_bytes, stop)
                os.fsync(out.fileno())
        except FileNotFoundError as e:
            if e.filename != str(src):
                raise DataError(f"copying shard {shard.name} into {dst} failed: {e}") from None
            raise DataError(f"source shard {shard.name} listed in the manifest is missing "
                            f"from {src_dir}") from None
        except OSError as e:  # unreadable source, full or failing disk: one line, not a trace
            raise DataError(f"copying shard {shard.name} from {src_dir} into {dst} failed: "
                            f"{e}") from None
        if size != shard.bytes or digest != shard.sha256:
            raise DataError(f"source shard {src} is corrupt: {size} bytes, sha256 {digest[:12]}... "
                            f"but the manifest says {shard.bytes} bytes, sha256 "
                            f"{shard.sha256[:12]}...; re-create the shards with `unetdist shard`")
    write_marker(dst, shard)
