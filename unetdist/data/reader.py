"""Shard reading for the pipelines: manifest entries, raw tar samples, the corrupt-sample policy
and the in-memory sample cache.

Tars are read with webdataset's tar expander and key grouping on a file we open ourselves (its
URL opener would treat a `pipe:` name as a shell command). A tar read error or a shard whose
size or sample count disagrees with the manifest is a broken copy and always an error; a member
that does not decode is one bad sample, which `data.on_corrupt` decides about.

The cache keeps `Prepared` samples (decoded, channel-selected, CLAHE'd, with their normalisation
statistics) per shard. It lives in the process that builds the training stream, is filled there
before the DataLoader workers start (threads: OpenCV's PNG decoder releases the GIL) and reaches
the workers by fork, so every epoch's fresh workers start with it and never open a tar again.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from unetdist.data.codec import decode_sample
from unetdist.data.preprocess import Prepared, prepare
from unetdist.errors import DataError

if TYPE_CHECKING:
    from unetdist.config import DataConfig

DECODE_THREADS = 4
DECODE_CHUNK = 32  # raw samples held in memory at once while filling the cache


@dataclass(frozen=True)
class ShardInfo:
    """One shard as the manifest describes it."""

    path: str  # absolute
    name: str
    samples: int
    nbytes: int


def split_shards(root: str, split: str) -> list[ShardInfo]:
    """The split's shards in manifest order (sorted, like their keys). DataError if absent."""
    from unetdist.data.manifest import read_manifest

    manifest = read_manifest(root)
    entry = manifest.get("splits", {}).get(split)
    if not entry or not entry.get("shards"):
        have = ", ".join(sorted(manifest.get("splits", {}))) or "none"
        raise DataError(f"{root}: no shards for split {split!r} (manifest has: {have})")
    return [ShardInfo(os.path.join(os.path.abspath(root), s["name"]), s["name"],
                      int(s["samples"]), int(s["bytes"])) for s in entry["shards"]]


def check_size(shard: ShardInfo) -> None:
    try:
        size = os.path.getsize(shard.path)
    except OSError as e:
        raise DataError(f"shard {shard.name}: cannot read ({e.strerror}); re-stage it") from None
    if size != shard.nbytes:
        raise DataError(f"shard {shard.name} has {size} bytes, the manifest says {shard.nbytes}: "
                        f"a truncated or changed copy; re-stage it")


def iter_raw(shard: ShardInfo) -> Iterator[dict]:
    """Raw samples ({'__key__', '__url__', 'image.png': bytes, ...}) of one shard, in order."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    check_size(shard)
    count = 0
    try:
        with open(shard.path, "rb") as f:
            files = tar_file_expander([{"url": shard.path, "stream": f}])
            for raw in group_by_keys(files):
                count += 1
                yield raw
    except (tarfile.TarError, OSError, ValueError, EOFError) as e:
        reason = str(e.args[0]).split(" @ ")[0] if e.args else type(e).__name__  # drop repr
        raise DataError(f"shard {shard.name}: unreadable tar ({reason}); a truncated or broken "
                        f"copy, re-stage it") from None
    if count != shard.samples:
        raise DataError(f"shard {shard.name} holds {count} samples, the manifest says "
                        f"{shard.samples}; re-stage it")


def decode_checked(raw: dict, on_corrupt: str) -> tuple[dict | None, str]:
    """(decoded sample, '') or, with on_corrupt=skip, (None, reason). error mode raises."""
    try:
        return decode_sample(raw), ""
    except DataError as e:
        if on_corrupt == "error":
            raise
        return None, str(e)


def prep_key(cfg: DataConfig) -> tuple:
    """The config fields a `Prepared` sample depends on (part of the cache key)."""
    return cfg.channels, cfg.clahe, cfg.gamma, cfg.normalize


@dataclass
class ShardEntry:
    """Cached content of one shard under one preprocessing config."""

    stamp: tuple  # (size, mtime_ns) of the file when cached
    keys: list[str] | None = None  # sample keys in tar order, once the whole tar was read
    samples: dict[str, Prepared] = field(default_factory=dict)
    bad: dict[str, str] = field(default_factory=dict)  # key -> why it was skipped

    @property
    def complete(self) -> bool:
        return self.keys is not None and all(k in self.samples or k in self.bad
                                             for k in self.keys)


class SampleCache:
    """Prepared samples per (shard file, preprocessing config), never evicted."""

    def __init__(self) -> None:
        self._entries: dict[tuple, ShardEntry] = {}

    def entry(self, shard: ShardInfo, pkey: tuple) -> ShardEntry:
        st = os.stat(shard.path)
        stamp = (st.st_size, st.st_mtime_ns)
        e = self._entries.get((shard.path, pkey))
        if e is None or e.stamp != stamp:  # a re-staged shard invalidates what we had
            e = self._entries[(shard.path, pkey)] = ShardEntry(stamp)
        return e

    def nbytes(self) -> int:
        return sum(p.nbytes for e in self._entries.values() for p in e.samples.values())

    def clear(self) -> None:
        self._entries.clear()


CACHE = SampleCache()


class CacheView:
    """One stream's handle on a cache: each shard's file is checked (stat) once per stream."""

    def __init__(self, cache: SampleCache, pkey: tuple) -> None:
        self.cache, self.pkey, self._entries = cache, pkey, {}

    def entry(self, shard: ShardInfo) -> ShardEntry:
        e = self._entries.get(shard.path)
        if e is None:
            e = self._entries[shard.path] = self.cache.entry(shard, self.pkey)
        return e


def _decode_prepare(raw: dict, cfg: DataConfig) -> tuple[Prepared | None, str]:
    decoded, why = decode_checked(raw, cfg.on_corrupt)
    return (prepare(decoded, cfg) if decoded is not None else None), why


def fill_cache(shards: list[ShardInfo], cfg: DataConfig,
               cache: SampleCache = CACHE) -> list[tuple[str, str, str]]:
    """Decode and prepare every sample of SHARDS not cached yet; returns the bad ones found
    as (key, shard name, reason). With on_corrupt=error the first bad sample raises."""
    pkey, bad = prep_key(cfg), []
    with ThreadPoolExecutor(min(DECODE_THREADS, os.cpu_count() or 1)) as pool:
        for shard in shards:
            entry = cache.entry(shard, pkey)
            if entry.complete:
                continue
            keys, chunk = [], []
            for raw in iter_raw(shard):
                keys.append(raw["__key__"])
                if raw["__key__"] not in entry.samples and raw["__key__"] not in entry.bad:
                    chunk.append(raw)
                if len(chunk) >= DECODE_CHUNK:
                    bad += _store(entry, shard, chunk, pool.map(_decode_prepare, chunk,
                                                                [cfg] * len(chunk)))
                    chunk = []
            bad += _store(entry, shard, chunk, pool.map(_decode_prepare, chunk, [cfg] * len(chunk)))
            entry.keys = keys
    return bad


def _store(entry: ShardEntry, shard: ShardInfo, raws: list[dict],
           results) -> list[tuple[str, str, str]]:
    bad = []
    for raw, (prep, why) in zip(raws, results):
        if prep is None:
            entry.bad[raw["__key__"]] = why
            bad.append((raw["__key__"], shard.name, why))
        else:
            entry.samples[raw["__key__"]] = prep
    return bad
