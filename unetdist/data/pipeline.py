"""The input pipelines: training batches (resampled, exact under DDP) and evaluation samples.

Training (`run_batches`, the trainer's one stream): each rank makes `steps_per_epoch` batches
per epoch from its own seeded streams (see `stream.py`), so no rank ever waits for another at
an epoch boundary and any shard count works. ONE DataLoader serves the whole run and its
workers live across epochs (no re-fork, pin-thread restart or prefetch drain every
`steps_per_epoch`). Worker w of a loader started at global batch g0 makes global batches g0+w,
g0+w+W, ... (W workers); global batch g is step `g % steps_per_epoch` of epoch
`g // steps_per_epoch`, and the DataLoader's round-robin yields them in step order, so
resuming at any batch is exact. The DataLoader is built here and must NOT go through
`accelerator.prepare()` (that would re-shard or dispatch an already split stream); the trainer
moves batches to its device itself. The loader gets its own torch.Generator so building one
never advances the trainer's global RNG (a resumed run would otherwise drift).

Evaluation (`eval_samples`): rank r reads the contiguous r-th share of the split's samples in
key order, full resolution, no augmentation, each sample exactly once across ranks; shares can
be empty. No collectives happen here, so ranks with fewer samples never block.

Cache (data.cache): the cache is filled in the process that starts the loader (the trainer),
with a thread pool, before the workers start; forked workers inherit it copy-on-write (one
copy per rank, not per worker) and never open a tar; under spawn/forkserver it is pickled to
each worker instead. `run_batches` fills every training shard the rank may draw from in any
epoch (shares are reshuffled per epoch). Forking workers is also why OpenCV's thread pool is
switched off in this process once a loader has workers (see `single_threaded_opencv`).

Corrupt samples: with data.on_corrupt=skip each one is logged once (main process) and counted;
the count is logged at the end of every epoch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import torch

from unetdist.data.manifest import read_manifest, split_entries
from unetdist.data.preprocess import preprocess
from unetdist.data.reader import (
    CACHE,
    SampleCache,
    ShardInfo,
    decode_checked,
    fill_cache,
    iter_raw,
    split_shards,
)
from unetdist.data.stream import StreamSpec, stream_batches
from unetdist.errors import DataError
from unetdist.log import rank_warn

if TYPE_CHECKING:
    from unetdist.config import DataConfig



def count_samples(shard_dir: str, split: str, fold: int = -1) -> int:
    """Samples in SPLIT according to the manifest (0 when the split has none)."""

    return sum(int(s["samples"]) for s in split_entries(read_manifest(shard_dir), split, fold))


class _SkipLog:
    """Corrupt samples seen by a stream: logged once each, counted, summarised at the end."""

    def __init__(self, what: str) -> None:
        self.what, self.keys = what, set()

    def add(self, key: str, shard: str, why: str) -> None:
        if (shard, key) not in self.keys:
            self.keys.add((shard, key))
            rank_warn(f"skipping corrupt sample {key!r} in {shard}: {why}")

    def summary(self) -> None:
        if self.keys:
            rank_warn(f"skipped {len(self.keys)} corrupt {self.what} sample(s) "
                      "(data.on_corrupt=skip)")


def _identity(x):
    return x


def single_threaded_opencv() -> None:
    """Turn OpenCV's thread pool off in this process before forking DataLoader workers.

    A forked worker inherits the parent's pool without its threads, and touching it there
    (`setNumThreads`, or a parallel warp) can block forever on a condition variable; mmcv and
    mmdet do the same for the same reason. Each worker then uses one core, as it should.
    Call it before the process does any OpenCV work: shutting a pool down that already ran
    can itself leave a mutex locked for a later fork (seen once in ~6 demo runs).
    """
    import cv2

    if cv2.getNumThreads() > 1:
        cv2.setNumThreads(0)


def _forks() -> bool:
    """Whether DataLoader workers will be forked (the default start method, not fixing it)."""
    import multiprocessing

    method = multiprocessing.get_start_method(allow_none=True)
    return (method or multiprocessing.get_all_start_methods()[0]) == "fork"


class _RunDataset(torch.utils.data.IterableDataset):
    """Every epoch of one rank from global batch `start`; worker w makes start+w, start+w+W..."""

    def __init__(self, spec: StreamSpec, start: int, use_cache: bool,
                 cache: SampleCache | None) -> None:
        self.spec, self.start, self.use_cache, self.cache = spec, start, use_cache, cache

    def __iter__(self) -> Iterator[dict]:
        info = torch.utils.data.get_worker_info()
        n, per_epoch = self.spec.num_streams, self.spec.cfg.steps_per_epoch
        g = self.start + (info.id if info is not None else 0)
        try:
            cache = (self.cache or CACHE) if self.use_cache else None
            while True:
                epoch, step = divmod(g, per_epoch)
                count = len(range(step, per_epoch, n))  # this worker's steps of the epoch
                spec = dataclasses.replace(self.spec, epoch=epoch, start_step=step)
                yield from stream_batches(spec, step % n, step // n, count, cache)
                g += count * n
        except DataError as e:
            yield {"_error": str(e)}


def _make_loader(dataset, workers: int, seed: int) -> torch.utils.data.DataLoader:
    if workers:
        single_threaded_opencv()
    gen = torch.Generator().manual_seed(seed)  # never advances the trainer's global RNG
    return torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=workers, collate_fn=_identity,
        prefetch_factor=2 if workers else None, pin_memory=torch.cuda.is_available(),
        generator=gen)


def _checked(batch: dict, skipped: _SkipLog) -> dict:
    if "_error" in batch:
        raise DataError(batch["_error"])
    for key, shard, why in batch.pop("_bad"):
        skipped.add(key, shard, why)
    return batch


def run_batches(cfg: DataConfig, shard_dir: str, *, seed: int, rank: int, world_size: int,
                start_batch: int = 0) -> Iterator[dict]:
    """This rank's batches from global batch START_BATCH on, epoch after epoch, endlessly.

    Batches are dicts of CPU tensors: image float32 (B,C,h,w), label/fov uint8 (B,1,h,w) in
    {0,1}, key list[str]. Batch g is step `g % steps_per_epoch` of epoch `g // steps_per_epoch`,
    deterministic in (seed, epoch, rank, data.num_workers); started at START_BATCH=k it yields
    what the uninterrupted stream yields after k batches. Close the generator to stop the
    workers.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world size {world_size}")
    if cfg.num_workers:
        single_threaded_opencv()  # before the cache fill runs OpenCV in this process
    shards = tuple(split_shards(shard_dir, "train", cfg.fold))
    spec = StreamSpec(cfg, shards, seed, 0, rank, world_size, 0, max(1, cfg.num_workers))
    skipped = _SkipLog("training")
    if cfg.cache:
        for key, shard, why in fill_cache(sorted(shards, key=lambda s: s.name), cfg):
            skipped.add(key, shard, why)
    ship = CACHE if cfg.num_workers and cfg.cache and not _forks() else None
    loader = _make_loader(_RunDataset(spec, start_batch, cfg.cache, ship), cfg.num_workers,
                          spec.seed_for(0xDA7A))
    g = start_batch
    for batch in loader:
        yield _checked(batch, skipped)
        g += 1
        if g % cfg.steps_per_epoch == 0:
            skipped.summary()


class EvalStream:
    """This rank's share of a split, one preprocessed full-resolution sample at a time."""

    def __init__(self, cfg: DataConfig, shard_dir: str, split: str, *, rank: int,
                 world_size: int) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world size {world_size}")
        self.cfg, self.split = cfg, split
        self.shards = split_shards(shard_dir, split, cfg.fold)
        total = sum(s.samples for s in self.shards)
        self.lo, self.hi = rank * total // world_size, (rank + 1) * total // world_size
        self.skipped = _SkipLog(f"{split!r}")

    def __len__(self) -> int:
        """Samples assigned to this rank (corrupt ones skipped under on_corrupt=skip included)."""
        return self.hi - self.lo

    def _raw(self) -> Iterator[dict]:
        """Raw samples with global index in [lo, hi), in key order; other shards are not read."""
        offset = 0
        for shard in self.shards:
            start, offset = offset, offset + shard.samples
            if offset <= self.lo or start >= self.hi:
                continue
            last = None  # sorted within a shard; k-fold training shards are sorted per fold
            for i, raw in enumerate(iter_raw(shard), start=start):
                if last is not None and raw["__key__"] <= last:
                    raise DataError(f"shard {shard.name}: keys out of order ({last!r} then "
                                    f"{raw['__key__']!r}); rewrite the shards")
                last = raw["__key__"]
                if i >= self.lo:
                    yield raw
                if i + 1 >= self.hi:
                    return

    def __iter__(self) -> Iterator[dict]:
        for raw in self._raw():
            decoded, why = decode_checked(raw, self.cfg.on_corrupt)
            if decoded is None:
                self.skipped.add(raw["__key__"], raw["__url__"].rsplit("/", 1)[-1], why)
                continue
            yield _eval_sample(decoded, self.cfg)
        self.skipped.summary()


def _mask(m: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(m.astype(np.float32)[None, None])


def _eval_sample(d: dict, cfg: DataConfig) -> dict:
    out = {"key": d["key"], "image": torch.from_numpy(preprocess(d["image"], d["fov"], cfg)[None]),
           "label": _mask(d["label"]), "fov": _mask(d["fov"])}
    if "label2" in d:
        out["label2"] = _mask(d["label2"])
    out.update(rgb=d["image"], meta=d["meta"])
    return out


def eval_samples(cfg: DataConfig, shard_dir: str, split: str, *, rank: int,
                 world_size: int) -> EvalStream:
    """Every sample of SPLIT exactly once across ranks, this rank's share ordered by key.

    Each item: key, image float32 (1,C,H,W) preprocessed, label/fov (and label2 when present)
    float32 (1,1,H,W), rgb uint8 (H,W,3), meta dict. A rank's share may be empty.
    """
    return EvalStream(cfg, shard_dir, split, rank=rank, world_size=world_size)


__all__ = ["EvalStream", "ShardInfo", "count_samples", "eval_samples", "run_batches"]
