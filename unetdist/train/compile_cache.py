"""torch.compile's on-disk kernel cache: repair what a killed compile left behind.

A compile killed while it links a kernel leaves a 0-byte or truncated `.so` in inductor's cache
(`TORCHINDUCTOR_CACHE_DIR`, default `/tmp/torchinductor_<user>`). The next compile of the same
code finds the file, skips the build and fails to load it ("file too short"), and so does every
later run on the machine. Before compiling we remove every `.so` that cannot be a complete ELF
file; should a load still fail (a file the scan spared because it was still being written),
the first forward removes the bad entries and retries once, else stops with one `error:` line
that names the folder and the fix.
"""

from __future__ import annotations

import functools
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from unetdist.errors import UserError
from unetdist.log import warn

# A .so younger than this may be a concurrent compile's output still being written: spared
# by the scan before compiling, removed only after a load of it has failed.
MIN_AGE_S = 30.0
# What the dynamic loader says about a broken shared object.
LOAD_ERRORS = ("file too short", "invalid ELF header", "ELF load command", "unexpected EOF")


def cache_dir() -> Path:
    """The folder inductor compiles into (its own resolution of TORCHINDUCTOR_CACHE_DIR)."""
    from torch._inductor.runtime.cache_dir_utils import cache_dir as inductor_cache_dir

    return Path(inductor_cache_dir())


def is_complete_elf(path: Path) -> bool:
    """Whether `path` holds an ELF header and every byte up to its section header table, which
    the linker writes last: a 0-byte or truncated file fails."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return True  # unreadable or gone: not ours to judge
    if len(head) < 52 or head[:4] != b"\x7fELF" or head[4] not in (1, 2) or head[5] not in (1, 2):
        return False
    endian = "<" if head[5] == 1 else ">"
    if head[4] == 2:  # 64-bit
        if len(head) < 64:
            return False
        (shoff,) = struct.unpack_from(endian + "Q", head, 0x28)
        shentsize, shnum = struct.unpack_from(endian + "HH", head, 0x3A)
    else:
        (shoff,) = struct.unpack_from(endian + "I", head, 0x20)
        shentsize, shnum = struct.unpack_from(endian + "HH", head, 0x2E)
    return size >= shoff + shentsize * shnum


def bad_entries(root: Path, min_age_s: float = MIN_AGE_S) -> list[Path]:
    """The incomplete `.so` files under `root` last modified at least `min_age_s` ago."""
    if not root.is_dir():
        return []
    now = time.time()
    bad = []
    for path in sorted(root.rglob("*.so")):
        try:
            old = now - path.stat().st_mtime >= min_age_s
        except OSError:
            continue
        if old and path.is_file() and not is_complete_elf(path):
            bad.append(path)
    return bad


def repair(root: Path | None = None, min_age_s: float = MIN_AGE_S) -> list[Path]:
    """Remove the bad entries under `root` (default: inductor's cache) and say so once."""
    root = root or cache_dir()
    bad = bad_entries(root, min_age_s)
    for path in bad:
        path.unlink(missing_ok=True)  # another rank may have removed it first
    if bad:
        warn(f"removed {len(bad)} truncated compiled kernel(s) from torch's compile cache "
             f"{root} (left by a killed compile); they are rebuilt")
    return bad


def is_cache_fault(exc: BaseException) -> bool:
    """Whether `exc` (or an exception it chains) is the loader refusing a broken `.so`."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if any(text in str(exc) for text in LOAD_ERRORS):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _guarded(forward: Callable, root: Path) -> Callable:
    """`forward` that repairs the cache and retries once when a cached kernel fails to load."""
    retried = False

    @functools.wraps(forward)
    def call(*args: Any, **kwargs: Any) -> Any:
        nonlocal retried
        try:
            return forward(*args, **kwargs)
        except Exception as e:
            if not is_cache_fault(e):
                raise
            if retried or not repair(root, min_age_s=0.0):
                raise UserError(f"torch.compile cannot load a kernel from its cache {root}: "
                                f"remove that folder (rm -rf {root}) and run again, or run "
                                "with model.compile=false") from e
            retried = True
            import torch._dynamo

            torch._dynamo.reset()  # forget the failed frame: compile it again from scratch
            return forward(*args, **kwargs)

    return call


def with_cache_repair(compiled: nn.Module) -> nn.Module:
    """A `torch.compile`d module (else `compiled` unchanged) after removing broken cache
    entries, which it has not loaded yet (compiling happens at the first call); its forward
    repairs and retries once more if a kernel still fails to load."""
    if getattr(compiled, "_orig_mod", None) is None:  # not compiled (model.compile=false)
        return compiled
    root = cache_dir()
    repair(root)
    compiled.forward = _guarded(compiled.forward, root)
    return compiled
