"""Shard reading for the pipelines: manifest entries, raw tar samples, the corrupt-sample policy
and the in-memory sample cache.

Tars are read with webdataset's tar expander and key grouping on a file we open ourselves (its
URL opener would treat a `pipe:` name as a shell command). A tar read error or a shard whose
size or sample count disagrees with the manifest is a broken copy and always an error; a member
that does not decode is one bad sample, which `data.on_corrupt` decides about.

Before any member is decoded its PNG header is checked (`check_png_headers`): a member that is
not a PNG, declares a size other than the one `shard` recorded in the sample's meta.json, or
more than MAX_PIXELS pixels is a bad sample, refused without allocating its pixels (a 1 MB PNG
can declare 30000 x 30000 pixels: a decompression bomb).

The cache keeps `Prepared` samples (decoded, channel-selected, CLAHE'd, with their normalisation
statistics) per shard. It lives in the process that builds the training stream, is filled there
before the DataLoader workers start (threads: OpenCV's PNG decoder releases the GIL) and is
pickled to each worker as it starts (`pipeline.py`), so workers never open a tar again.
"""

from __future__ import annotations

import functools
import os
import struct
import tarfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from unetdist.data.classes import MAX_LABELS, ClassTable
from unetdist.data.codec import CHANNEL_MEMBER, MAX_PIXELS, check_label, decode_sample, read_meta
from unetdist.data.keys import checked_keys
from unetdist.data.manifest import (
    MANIFEST,
    check_fold,
    class_table,
    read_manifest,
    split_entries,
    split_names,
)
from unetdist.data.preprocess import PACK_VERSION, Prepared, prepare
from unetdist.errors import DataError

if TYPE_CHECKING:
    from unetdist.config import DataConfig

DECODE_THREADS = 4
DECODE_CHUNK = 32  # raw samples held in memory at once while filling the cache
PNG_MEMBERS = ("image.png", "label.png", "fov.png", "label2.png", "classes.png",
               *(CHANNEL_MEMBER.format(c) for c in range(1, MAX_LABELS + 1)))
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
STAGE_STATE = ".stage"  # the folder `unetdist stage` keeps in a staged copy (stage/copy.py)


@dataclass(frozen=True)
class ShardInfo:
    """One shard as the manifest describes it."""

    path: str  # absolute
    name: str
    samples: int
    nbytes: int


def split_shards(root: str, split: str, fold: int = -1) -> list[ShardInfo]:
    """The split's shards in manifest order (sorted, like their keys). DataError if absent.

    `fold` is data.fold: with k-fold shards, "train" is the other folds and "val" fold `fold`.
    """

    manifest = read_manifest(root)
    check_fold(manifest, fold, os.path.join(root, MANIFEST))
    entries = split_entries(manifest, split, fold)
    if not entries:
        have = ", ".join(split_names(manifest, fold)) or "none"
        raise DataError(f"{root}: no shards for split {split!r} (manifest has: {have})")
    return [ShardInfo(os.path.join(os.path.abspath(root), s["name"]), s["name"],
                      int(s["samples"]), int(s["bytes"])) for s in entries]


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
            for raw in checked_keys(group_by_keys(files), shard.name):
                count += 1
                yield raw
    except (tarfile.TarError, OSError, ValueError, EOFError) as e:
        reason = str(e.args[0]).split(" @ ")[0] if e.args else type(e).__name__  # drop repr
        raise DataError(f"shard {shard.name}: unreadable tar ({reason}); a truncated or broken "
                        f"copy, re-stage it") from None
    if count != shard.samples:
        raise DataError(f"shard {shard.name} holds {count} samples, the manifest says "
                        f"{shard.samples}; re-stage it")


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, or None when DATA is not a PNG."""
    if len(data) < 24 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def _recorded_size(raw: dict, where: str) -> tuple[int, int] | None:
    """(width, height) that `shard` wrote into meta.json, when there (DataError if malformed)."""
    if "meta.json" not in raw:
        return None
    meta = read_meta(raw["meta.json"], where)
    return (meta["width"], meta["height"]) if "width" in meta else None


def check_png_headers(raw: dict, max_pixels: int = MAX_PIXELS) -> None:
    """DataError for a member that is not a PNG, or declares an unexpected or huge size.

    Reads 24 header bytes per member; nothing is decoded.
    """
    where = f"sample {raw.get('__key__', '?')!r}" + (f" in {raw['__url__']}"
                                                     if "__url__" in raw else "")
    expected = _recorded_size(raw, where)
    for member in PNG_MEMBERS:
        if member not in raw:
            continue
        size = png_size(raw[member])
        if size is None:
            raise DataError(f"{where}: {member} is not a PNG")
        w, h = size
        if expected is not None and size != expected:
            raise DataError(f"{where}: {member} declares {w}x{h} pixels, its meta.json records "
                            f"{expected[0]}x{expected[1]}; not decoded")
        if w * h > max_pixels:
            raise DataError(f"{where}: {member} declares {w}x{h} pixels, more than the "
                            f"{max_pixels} allowed; not decoded")


def _rehash_hint(raw: dict) -> str:
    """A staged copy can be corrupted with size and mtime unchanged: say how to re-verify it."""
    url = raw.get("__url__")
    if not url or not os.path.isdir(os.path.join(os.path.dirname(url), STAGE_STATE)):
        return ""
    folder = os.path.dirname(url)
    return (f" (a staged copy: re-verify it with `unetdist stage --rehash SHARED_DIR {folder}` "
            "or delete it to re-stage)")


@functools.lru_cache(maxsize=16)
def _folder_table(folder: str, stamp: tuple) -> ClassTable:
    """The class table of shard folder FOLDER (its manifest at STAMP: size, mtime)."""
    return class_table(read_manifest(folder))


def shard_table(url: str | None) -> ClassTable | None:
    """The class table of the folder holding shard URL (None without a URL or a manifest)."""
    if not url:
        return None
    folder = os.path.dirname(url)
    try:
        st = os.stat(os.path.join(folder, MANIFEST))
    except OSError:
        return None
    return _folder_table(folder, (st.st_size, st.st_mtime_ns))


def decode_checked(raw: dict, on_corrupt: str) -> tuple[dict | None, str]:
    """(decoded sample, '') or, with on_corrupt=skip, (None, reason). error mode raises.
    The label must fit the class table of the shard's folder (`codec.check_label`)."""
    try:
        check_png_headers(raw)
        decoded = decode_sample(raw)
        table = shard_table(raw.get("__url__"))
        if table is not None:
            check_label(decoded, table, f"sample {raw.get('__key__', '?')!r} in "
                                        f"{raw['__url__']}")
        return decoded, ""
    except DataError as e:
        error = DataError(f"{e}{_rehash_hint(raw)}")
        if on_corrupt == "error":
            raise error from None
        return None, str(error)


def prep_key(cfg: DataConfig) -> tuple:
    """The config fields a `Prepared` sample depends on, and the packed-mask layout's version
    (so a cache can never hand out masks packed the old way), as the cache key."""
    return PACK_VERSION, cfg.channels, cfg.clahe, cfg.gamma, cfg.normalize, cfg.scale


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


def prepare_checked(decoded: dict, cfg: DataConfig) -> tuple[Prepared | None, str]:
    """(training sample, '') or, with on_corrupt=skip, (None, reason): a label value the packed
    byte cannot hold (preprocess.pack_masks) is a bad sample like an undecodable member."""
    try:
        return prepare(decoded, cfg), ""
    except DataError as e:
        if cfg.on_corrupt == "error":
            raise
        return None, str(e)


def _decode_prepare(raw: dict, cfg: DataConfig) -> tuple[Prepared | None, str]:
    decoded, why = decode_checked(raw, cfg.on_corrupt)
    return prepare_checked(decoded, cfg) if decoded is not None else (None, why)


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
