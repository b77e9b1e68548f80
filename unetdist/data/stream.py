"""One logical training stream: resampled shards -> samples -> shuffle buffer -> views -> batches.

A rank's epoch is `steps_per_epoch` batches; batch `s` belongs to logical stream `s % S`
(S = max(1, num_workers)) and is batch `s // S` of that stream. DataLoader worker `w` of a
stream rebuilt at `start_step=k` plays logical stream `(k + w) % S`, because the DataLoader
hands out batches round-robin from worker 0; so the batch of step `s` is the same whichever
worker makes it, and the order the trainer sees is exactly step order.

Everything random is seeded from (seed, epoch, rank, stream): the shard choice (webdataset's
`ResampledShards` with an explicit seed instead of its pid/time seed), the shuffle buffer, and
each sample's augmentation (seeded by its index in the stream). Skipping the first batches
therefore needs only the raw sample order: skipped samples are not decoded (unless
on_corrupt=skip must learn whether they were good, and no cache knows it already).
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import cv2
import numpy as np
import torch

from unetdist.data.augment import render_view, view_size
from unetdist.data.preprocess import FOV_LUT, LABEL_LUT, Prepared
from unetdist.data.reader import (
    CacheView,
    SampleCache,
    ShardEntry,
    ShardInfo,
    decode_checked,
    iter_raw,
    prep_key,
    prepare_checked,
)
from unetdist.errors import DataError

if TYPE_CHECKING:
    from unetdist.config import DataConfig

# Domain tags keep the seed streams for different purposes independent.
SHARD_ORDER, SHARD_PICK, SHUFFLE, VIEW = 11, 12, 13, 14


@dataclass(frozen=True)
class StreamSpec:
    """Everything a DataLoader worker needs to produce its batches (picklable)."""

    cfg: DataConfig
    shards: tuple[ShardInfo, ...]
    seed: int
    epoch: int
    rank: int
    world_size: int
    start_step: int
    num_streams: int

    def seed_for(self, *path: int) -> int:
        ss = np.random.SeedSequence([self.seed, self.epoch, self.rank, *path])
        return int(ss.generate_state(1)[0])


def assign_shards(spec: StreamSpec, stream: int) -> list[ShardInfo]:
    """The explicit node splitter, then worker splitter, over an epoch-seeded shard order.

    With at least as many shards as ranks, each rank resamples from its own share (reshuffled
    every epoch, the same permutation on every rank); with enough shards per rank each stream
    gets its own share too. Otherwise streams share shards and differ by their seeds, so any
    shard count works, down to one shard for all ranks and workers.
    """
    shards = list(spec.shards)
    if len(shards) < spec.world_size:
        return shards
    order_seed = np.random.SeedSequence([spec.seed, spec.epoch, SHARD_ORDER]).generate_state(1)
    random.Random(int(order_seed[0])).shuffle(shards)
    node = shards[spec.rank::spec.world_size]
    return node[stream::spec.num_streams] if len(node) >= spec.num_streams else node


class Ref(NamedTuple):
    """A sample in the raw stream: its shard, key, and its bytes unless the cache holds it."""

    shard: ShardInfo
    key: str
    raw: dict | None


def _refs(spec: StreamSpec, stream: int, cache: CacheView | None) -> Iterator[Ref]:
    """Endless raw samples from shards resampled with an explicit seed."""
    from webdataset.shardlists import ResampledShards

    shards = assign_shards(spec, stream)
    by_path = {s.path: s for s in shards}
    urls = ResampledShards(sorted(by_path), seed=spec.seed_for(stream, SHARD_PICK),
                           worker_seed=lambda: 0, deterministic=True)
    for item in urls:
        shard = by_path[item["url"]]
        entry = cache.entry(shard) if cache is not None else None
        if entry is not None and entry.complete:  # no tar I/O at all
            yield from (Ref(shard, k, None) for k in entry.keys)
            continue
        keys = []
        for raw in iter_raw(shard):
            keys.append(raw["__key__"])
            yield Ref(shard, raw["__key__"], raw)
        if entry is not None:
            entry.keys = keys


class _Materializer:
    """Ref -> Prepared (or None for a corrupt sample), through the cache when there is one."""

    def __init__(self, cfg: DataConfig, cache: CacheView | None) -> None:
        self.cfg, self.cache = cfg, cache
        self.bad: dict[tuple[str, str], str] = {}  # (shard, key) -> reason, this stream
        self.new_bad: list[tuple[str, str, str]] = []  # not yet reported to the main process

    def _entry(self, ref: Ref) -> ShardEntry | None:
        return self.cache.entry(ref.shard) if self.cache is not None else None

    def known(self, ref: Ref) -> bool | None:
        """True/False when the sample is known good/bad without decoding it, else None."""
        if (ref.shard.name, ref.key) in self.bad:
            return False
        e = self._entry(ref)
        if e is not None and (ref.key in e.samples or ref.key in e.bad):
            return ref.key in e.samples
        return None

    def get(self, ref: Ref) -> Prepared | None:
        e = self._entry(ref)
        if e is not None and ref.key in e.samples:
            return e.samples[ref.key]
        why = e.bad.get(ref.key) if e is not None else self.bad.get((ref.shard.name, ref.key))
        prep = None
        if why is None:
            if ref.raw is None:
                raise RuntimeError(f"cache lost sample {ref.key}")  # cannot happen: no eviction
            decoded, why = decode_checked(ref.raw, self.cfg.on_corrupt)
            if decoded is not None:
                prep, why = prepare_checked(decoded, self.cfg)
            if e is not None and prep is not None:
                e.samples[ref.key] = prep
            elif e is not None:
                e.bad[ref.key] = why
        if prep is None and (ref.shard.name, ref.key) not in self.bad:
            self.bad[(ref.shard.name, ref.key)] = why
            self.new_bad.append((ref.key, ref.shard.name, why))
        return prep


def _batch_array(shape: tuple[int, ...], shared: bool,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    t = torch.empty(shape, dtype=dtype)
    return t.share_memory_() if shared else t  # in a worker: no copy when sent to the trainer


class _Batch:
    """Views rendered straight into the batch's tensors (no stacking or IPC copy)."""

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg, self.keys, self.tensors = cfg, [], None

    def _allocate(self, h: int, w: int) -> None:
        b, c = self.cfg.batch_size, self.cfg.in_channels
        shared = torch.utils.data.get_worker_info() is not None
        self.tensors = {"image": _batch_array((b, c, h, w), shared),
                        "label": _batch_array((b, 1, h, w), shared, torch.uint8),
                        "fov": _batch_array((b, 1, h, w), shared, torch.uint8)}
        self.image, self.label, self.fov = (self.tensors[k].numpy()
                                            for k in ("image", "label", "fov"))

    def add(self, prep: Prepared, rng: np.random.Generator) -> None:
        i, size = len(self.keys), view_size(prep, self.cfg)
        if self.tensors is None:
            self._allocate(*size)
        elif size != self.image.shape[2:]:
            raise DataError(f"sample {prep.key!r} has size {prep.intensity.shape[:2]}, others "
                            f"{self.image.shape[2:]}: data.crop=0 needs equal image sizes; "
                            f"set data.crop or data.resize")
        _, masks = render_view(prep, self.cfg, rng, out=self.image[i])
        # label (class indices, ignore 255) and FOV travel to the trainer (and over PCIe) as
        # one uint8 each, a quarter of float32; the loss converts them on the device
        cv2.LUT(masks, LABEL_LUT, dst=self.label[i, 0])
        cv2.LUT(masks, FOV_LUT, dst=self.fov[i, 0])
        self.keys.append(prep.key)

    @property
    def full(self) -> bool:
        return len(self.keys) == self.cfg.batch_size

    def collate(self, bad: list) -> dict:
        return {**self.tensors, "key": self.keys, "_bad": bad}


def stream_batches(spec: StreamSpec, stream: int, first_batch: int, count: int,
                   cache: SampleCache | None) -> Iterator[dict]:
    """Batches FIRST_BATCH .. FIRST_BATCH+COUNT-1 of logical stream STREAM."""
    if count <= 0:
        return
    from webdataset.filters import shuffle  # the public, curried form

    cfg, size = spec.cfg, spec.cfg.batch_size
    total = sum(s.samples for s in assign_shards(spec, stream))
    buf = cfg.shuffle_buffer
    view = CacheView(cache, prep_key(cfg)) if cache is not None else None
    refs = shuffle(buf, initial=buf,
                   rng=random.Random(spec.seed_for(stream, SHUFFLE)))(_refs(spec, stream, view))
    mat, index, skip, batch = _Materializer(cfg, view), 0, first_batch * size, _Batch(cfg)
    for ref in refs:
        if index < skip:  # resume: advance without decoding whenever the outcome is known
            known = mat.known(ref)
            if known or (known is None and cfg.on_corrupt == "error"):
                index += 1
                continue
        prep = mat.get(ref)
        if prep is None:
            if len(mat.bad) >= total:  # resampling would search forever
                names = ", ".join(s.name for s in assign_shards(spec, stream))
                raise DataError(f"all {total} training samples in {names} are corrupt")
            continue
        index += 1
        if index <= skip:
            continue
        rng = np.random.default_rng([spec.seed, spec.epoch, spec.rank, stream, VIEW, index - 1])
        batch.add(prep, rng)
        if batch.full:
            yield batch.collate(mat.new_bad)
            batch, mat.new_bad = _Batch(cfg), []
            count -= 1
            if count == 0:
                return
