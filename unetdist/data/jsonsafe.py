"""JSON written by someone else (shards, staged copies, run folders): bounded, then typed.

`json.loads` trusts its input: it recurses once per nesting level (200,000 `[` are a
RecursionError traceback, not a bad file), reads a file of any size whole, and accepts `NaN`
and `Infinity`. `loads`/`read` refuse all of that as one DataError line naming the file, and
return plain JSON values whose nesting is at most MAX_DEPTH, so code walking them never
recurses deeply. They do not type the members: each reader checks the fields it uses
(`codec.read_meta`, `manifest.read_manifest`) before anything else sees them.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

from unetdist.errors import DataError

MAX_DEPTH = 32  # our files nest 4 levels deep (manifest folds); room for others
META_BYTES = 64 * 1024  # a sample's meta.json: ~200 bytes when `shard` writes it
MANIFEST_BYTES = 16 * 2**20  # ~100 bytes per shard and per k-fold id: 100k images use ~3 MB


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _depth(value: object, limit: int) -> int:
    """Nesting depth of VALUE (a scalar is 0), without recursion; stops past LIMIT."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            deepest = max(deepest, d + 1)
            if deepest > limit:
                return deepest
            stack.extend((c, d + 1) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def loads(data: bytes | str, where: str, *, max_bytes: int, max_depth: int = MAX_DEPTH):
    """The JSON value in DATA; DataError 'WHERE: why' if too big, too deep or invalid."""
    if len(data) > max_bytes:
        raise DataError(f"{where}: {len(data)} bytes, more than the {max_bytes} allowed")
    try:
        value = json.loads(data, parse_constant=_reject_constant)
    except RecursionError:
        raise DataError(f"{where}: JSON nested more than {max_depth} levels deep") from None
    except (ValueError, UnicodeDecodeError) as e:
        reason = " ".join(str(e).split())[:200]
        raise DataError(f"{where}: invalid JSON ({reason})") from None
    if _depth(value, max_depth) > max_depth:
        raise DataError(f"{where}: JSON nested more than {max_depth} levels deep")
    return value


def read_bytes(path: str | Path, max_bytes: int) -> bytes:
    """At most MAX_BYTES of the regular file PATH (DataError: not a file, too big, unreadable).

    Opened non-blocking, so a FIFO planted under the name fails here instead of hanging.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise DataError(f"{path}: not a regular file")
        try:
            data = f.read(max_bytes + 1)
        except OSError as e:
            raise DataError(f"{path}: cannot read ({e.strerror})") from None
    if len(data) > max_bytes:
        raise DataError(f"{path}: larger than the {max_bytes} bytes allowed")
    return data


def read(path: str | Path, *, max_bytes: int, max_depth: int = MAX_DEPTH):
    """The JSON value in file PATH, read and checked as `read_bytes` and `loads` do."""
    return loads(read_bytes(path, max_bytes), str(path), max_bytes=max_bytes,
                 max_depth=max_depth)
