"""Stage shards from shared storage to node-local disk: one verified copy per node.

`stage(src, dst)` copies every shard of SRC's manifest that DST lacks, reading each source file
once and hashing it while it is written; the manifest is written last, so its presence in DST
means "complete". `resolve_data_dir(cfg)` applies data.shared_dir / local_dir / stage at the
start of a job, before the process group exists: LOCAL_RANK 0 stages, the other local ranks
wait for it (see stage_wait).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from unetdist.atomic import fsync_path as fsync_dir  # a folder fsync makes renames durable
from unetdist.atomic import write_atomic
from unetdist.data.manifest import parse_manifest, read_manifest
from unetdist.data.stage.copy import (
    MANIFEST,
    Shard,
    copy_verified,
    hash_file,
    marker_dir,
    marker_matches,
    read_json_or_none,
    remove_marker,
    tmp_dir,
    write_marker,
)
from unetdist.data.stage.wait import clear_failure, record_failure, stage_lock, wait_for_stage
from unetdist.errors import ConfigError, DataError, FileSystemError, UserError

if TYPE_CHECKING:
    from unetdist.config import DataConfig

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass
class StageResult:
    """What one stage did."""

    copied_bytes: int = 0  # bytes copied from SRC (0 when DST was already complete)
    copied: list[str] = field(default_factory=list)  # shards copied, manifest order
    skipped: list[str] = field(default_factory=list)  # shards already verified in DST
    seconds: float = 0.0  # wall time, lock wait included
    hashed_bytes: int = 0  # bytes of local copies re-hashed (no marker, or rehash=True)


# ----------------------------------------------------------------------------- the manifest


def _shard_list(manifest: dict, where: Path) -> list[Shard]:
    """Every shard of every split. read_manifest checked the entries; the name check stays
    here because a plain file name is what keeps every write inside DST."""
    shards = [Shard(s["name"], s["bytes"], s["sha256"])
              for entry in manifest["splits"].values() for s in entry["shards"]]
    for s in shards:
        if not _NAME.fullmatch(s.name) or s.name == MANIFEST:
            raise DataError(f"{where}: invalid shard name {s.name!r}")
    return shards


def load_source(src: Path) -> tuple[bytes, dict, list[Shard]]:
    """SRC's checked manifest as raw bytes (copied verbatim), parsed, and its shard list."""
    if not src.is_dir():
        raise DataError(f"stage source not found: {src}")
    checked = read_manifest(src)
    raw = (src / MANIFEST).read_bytes()  # what is copied and compared: exactly these bytes
    try:
        manifest = parse_manifest(raw, src / MANIFEST)
    except DataError:
        manifest = None
    if manifest != checked:
        raise DataError(f"{src / MANIFEST} changed while it was being read; try again")
    return raw, manifest, _shard_list(manifest, src / MANIFEST)


# ----------------------------------------------------------------------------- helpers


def human(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _bar(total: int, desc: str, progress: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not progress,
                file=sys.stderr, dynamic_ncols=True)


def _parallel(fn: Callable, items: list, threads: int, total: int, desc: str,
              progress: bool) -> list:
    """FN(item, on_bytes, stop) over ITEMS in a thread pool with one byte-progress bar.

    The first error stops the others (they see `stop` and clean up) and is raised.
    """
    lock = threading.Lock()
    stop = threading.Event()
    with _bar(total, desc, progress) as bar:
        def on_bytes(n: int) -> None:
            with lock:
                bar.update(n)

        with ThreadPoolExecutor(max_workers=max(1, min(threads, len(items)))) as pool:
            futures = {pool.submit(fn, item, on_bytes, stop): i for i, item in enumerate(items)}
            results = [None] * len(items)
            try:
                for f in as_completed(futures):
                    results[futures[f]] = f.result()
            except BaseException:
                stop.set()
                for f in futures:
                    f.cancel()
                raise
    return results


def _clean_leftovers(dst: Path) -> None:
    """Temporary files of an interrupted stage are never trusted: remove them (we hold the lock)."""
    found = list(tmp_dir(dst).glob("*")) + list(dst.glob(f".{MANIFEST}.tmp-*"))
    found += list(marker_dir(dst).glob(".*.tmp-*"))
    for p in found:
        p.unlink(missing_ok=True)
    if found:
        print(f"stage: removed {len(found)} temporary file(s) left by an interrupted stage of "
              f"{dst}", file=sys.stderr)
    tmp_dir(dst).mkdir(parents=True, exist_ok=True)
    marker_dir(dst).mkdir(parents=True, exist_ok=True)


def _remove_manifest(dst: Path) -> None:
    """DST stops looking complete before any shard in it changes."""
    if (dst / MANIFEST).exists():
        (dst / MANIFEST).unlink()
        fsync_dir(dst)


def _remove_stale(dst: Path, names: set[str]) -> None:
    """Drop shards we staged earlier for another manifest (only files with our marker)."""
    for marker in marker_dir(dst).glob("*.json"):
        name = marker.name[: -len(".json")]
        if name in names or not _NAME.fullmatch(name):
            continue
        # Shard first: a crash in between leaves a marker without its file (dropped next time),
        # never a shard nobody knows we staged.
        (dst / name).unlink(missing_ok=True)
        marker.unlink(missing_ok=True)


def _plan(dst: Path, shards: list[Shard], rehash: bool) -> tuple[list, list, list]:
    """Split shards into verified (skip), present with the right size (hash), and to copy."""
    ok, check, copy = [], [], []
    for s in shards:
        path = dst / s.name
        if path.is_dir() and not path.is_symlink():
            raise DataError(f"{path} is in the way of shard {s.name}: remove it")
        # a link is no local copy: replace it
        if not path.is_file() or path.is_symlink() or path.stat().st_size != s.bytes:
            copy.append(s)
        elif not rehash and marker_matches(dst, s):
            ok.append(s)
        else:
            check.append(s)
    return ok, check, copy


def _verify_local(dst: Path, shards: list[Shard], threads: int, progress: bool) -> list[bool]:
    """Hash local copies that have no valid marker (or all, with rehash); mark the good ones."""
    def check(s: Shard, on_bytes, stop) -> bool:
        good = hash_file(dst / s.name, on_bytes) == s.sha256
        if good:
            write_marker(dst, s)
        return good

    total = sum(s.bytes for s in shards)
    return _parallel(check, shards, threads, total, "verify local", progress)


def _check_space(dst: Path, shards: list[Shard]) -> None:
    needed = sum(s.bytes for s in shards)
    freed = sum(p.lstat().st_size for p in (dst / s.name for s in shards)
                if p.is_file() and not p.is_symlink())
    available = shutil.disk_usage(dst).free + freed
    if needed > available:
        raise DataError(f"not enough free space in {dst}: staging needs {human(needed)} "
                        f"({needed} bytes), {human(available)} ({available} bytes) available")


def _copy(src: Path, dst: Path, shards: list[Shard], threads: int, progress: bool) -> None:
    for s in shards:  # invalid copies go before the copy starts: their space is needed
        remove_marker(dst, s.name)
        (dst / s.name).unlink(missing_ok=True)

    def one(s: Shard, on_bytes, stop) -> None:
        copy_verified(src, dst, s, on_bytes, stop)

    total = sum(s.bytes for s in shards)
    _parallel(one, shards, threads, total, f"stage {len(shards)} shards", progress)
    fsync_dir(dst)


def _stage_locked(src: Path, dst: Path, raw: bytes, manifest: dict, shards: list[Shard],
                  rehash: bool, threads: int, progress: bool) -> StageResult:
    _clean_leftovers(dst)
    if read_json_or_none(dst / MANIFEST) != manifest:
        _remove_manifest(dst)  # a copy of another dataset must never look complete again
        _remove_stale(dst, {s.name for s in shards})
    _, check, copy = _plan(dst, shards, rehash)
    if check:
        good = _verify_local(dst, check, threads, progress)
        copy += [s for s, g in zip(check, good) if not g]
    if copy:
        _remove_manifest(dst)
        _check_space(dst, copy)
        _copy(src, dst, copy, threads, progress)
    if read_json_or_none(dst / MANIFEST) != manifest:
        fsync_dir(marker_dir(dst))
        write_atomic(dst / MANIFEST, raw, durable=True)  # last: its presence means complete
    copied = {s.name for s in copy}
    return StageResult(copied_bytes=sum(s.bytes for s in copy),
                       copied=[s.name for s in shards if s.name in copied],
                       skipped=[s.name for s in shards if s.name not in copied],
                       hashed_bytes=sum(s.bytes for s in check))


# ----------------------------------------------------------------------------- public API


def stage(src: str | os.PathLike, dst: str | os.PathLike, *, rehash: bool = False,
          threads: int = 4, progress: bool = True,
          lock_timeout: float | None = None, setting: str = "") -> StageResult:
    """Make DST a complete, sha256-verified copy of the shard folder SRC.

    Holds the node-wide lock on DST (waiting up to LOCK_TIMEOUT seconds, None = forever).
    Shards whose marker still matches are skipped; REHASH re-verifies every local copy.
    Raises DataError on a missing SRC/manifest, a corrupt source shard (named), or not enough
    space; a failed stage leaves DST without a manifest (incomplete), never half-written files.
    A DST that cannot be written is a FileSystemError naming it (and SETTING, the config field
    it came from).
    """
    t0 = time.perf_counter()
    src, dst = Path(src).absolute(), Path(dst).absolute()
    if threads < 1:
        raise UserError(f"threads must be >= 1, got {threads}")
    raw, manifest, shards = load_source(src)
    if dst.exists() and os.path.samefile(src, dst):
        raise UserError(f"stage source and destination are the same folder: {src}")
    try:
        result = _stage_into(src, dst, raw, manifest, shards, rehash, threads, progress,
                             lock_timeout)
    except OSError as e:  # read-only, permissions, full disk, a file in the way
        if e.filename and Path(e.filename).is_relative_to(src):
            raise DataError(f"cannot read {e.filename}: {e.strerror}") from None
        raise FileSystemError.of(e, dst, "stage into", setting) from None
    result.seconds = time.perf_counter() - t0
    return result


def _stage_into(src: Path, dst: Path, raw: bytes, manifest: dict, shards: list[Shard],
                rehash: bool, threads: int, progress: bool,
                lock_timeout: float | None) -> StageResult:
    dst.mkdir(parents=True, exist_ok=True)
    wait_note = f"stage: another process is staging into {dst}; waiting for its lock"
    with stage_lock(dst, lock_timeout, announce=wait_note if progress else None):
        clear_failure(dst)
        try:
            result = _stage_locked(src, dst, raw, manifest, shards, rehash, threads, progress)
        except BaseException as e:
            record_failure(dst, e)
            raise
    return result


def summary(src: Path | str, dst: Path | str, r: StageResult) -> str:
    """One line for logs."""
    rate = f" ({human(r.copied_bytes / r.seconds)}/s)" if r.copied_bytes and r.seconds else ""
    hashed = f" (re-hashed {human(r.hashed_bytes)} locally)" if r.hashed_bytes else ""
    return (f"staged {src} -> {dst}: copied {len(r.copied)} shard(s), {human(r.copied_bytes)}"
            f"{rate}; {len(r.skipped)} already verified{hashed}; {r.seconds:.1f}s")


def _local_rank() -> int:
    # Under a bare `srun` with several tasks per node only SLURM_LOCALID says who is first.
    name = "LOCAL_RANK" if "LOCAL_RANK" in os.environ else "SLURM_LOCALID"
    value = os.environ.get(name, "0")
    if not value.isdigit():
        raise UserError(f"{name} must be an integer >= 0, got {value!r}")
    return int(value)


def _check_local_copy(local: Path) -> None:
    """data.stage=false: the local folder must already hold a complete copy."""
    if not (local / MANIFEST).is_file():
        raise DataError(f"data.local_dir={local} holds no complete copy (no {MANIFEST}): stage "
                        f"it with `unetdist stage SHARED {local}` or set data.stage=true")
    _, _, shards = load_source(local)
    for s in shards:
        path = local / s.name
        if not path.is_file() or path.stat().st_size != s.bytes:
            raise DataError(f"data.local_dir={local} is incomplete: shard {s.name} is missing "
                            f"or has the wrong size; set data.stage=true to re-stage it")


def check_data_paths(cfg: DataConfig) -> str:
    """Check the data paths of a DataConfig without copying anything; return the folder to read.

    data.shared_dir must hold a readable manifest (unless data.stage=false, which reads
    data.local_dir as is and needs a complete copy there). Cheap: launch scripts call it once,
    in one process, before starting the workers (`unetdist train --check`).
    """
    if not cfg.local_dir or cfg.stage:  # data.stage=false reads data.local_dir as is
        if not cfg.shared_dir:
            raise ConfigError("data.shared_dir must be set to the shard folder (with "
                              "manifest.json), or data.local_dir with data.stage=false to read "
                              "a local copy as is; got neither")
        shared = Path(cfg.shared_dir).absolute()
        if not shared.is_dir():
            raise DataError(f"data.shared_dir={shared} not found")
        load_source(shared)
        if not cfg.local_dir:
            return str(shared)
    local = Path(cfg.local_dir).absolute()
    if not cfg.stage:
        _check_local_copy(local)
    return str(local)


def resolve_data_dir(cfg: DataConfig) -> str:
    """The shard folder to read for this DataConfig; stages it first where configured.

    Runs before the process group exists. With data.local_dir set and data.stage true, the
    process with LOCAL_RANK 0 stages data.shared_dir into it under the node's file lock and
    the node's other processes wait (data.stage_timeout) for the complete copy.
    """
    folder = check_data_paths(cfg)
    if not cfg.local_dir or not cfg.stage:
        return folder
    try:
        return _stage_on_node(cfg, Path(cfg.shared_dir).absolute(), Path(folder))
    except UserError as e:
        e.node_local = True  # a node's own staging failure: its first process says it
        raise


def _stage_on_node(cfg: DataConfig, shared: Path, local: Path) -> str:
    rank = _local_rank()
    if rank == 0:
        result = stage(shared, local, progress=True, lock_timeout=cfg.stage_timeout,
                       setting="data.local_dir")
        print(summary(shared, local, result), file=sys.stderr, flush=True)
    else:
        _, manifest, shards = load_source(shared)
        try:  # waiting takes DST's lock briefly: it too must be able to write there
            wait_for_stage(shared, local, manifest, shards, cfg.stage_timeout, local_rank=rank)
        except OSError as e:
            raise FileSystemError.of(e, local, "wait for the staged copy in",
                                     "data.local_dir") from None
    return str(local)
