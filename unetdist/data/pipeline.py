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
with a thread pool, before the workers start, and pickled to each worker (once per worker, at
its start). `run_batches` fills every training shard the rank may draw from in any epoch
(shares are reshuffled per epoch).

Workers are started by a forkserver, never forked from the trainer: a fork copies the trainer's
locks (OpenCV's and OpenMP's thread pools, the cache fill's threads) in whatever state they are,
and a worker once blocked for ever on a futex inside `cv2.warpAffine`, forked from a trainer
whose OpenCV pool was running. The forkserver is a fresh single-threaded interpreter that has
only imported the data modules (no pool has run in it). Its imports are paid once per process
(the trainer starts it early, so they overlap setup: `start_worker_server`), not once per worker
as with spawn: on a loaded 2-core box a first batch took 0.4-0.6 s forked, 0.9 s from a running
forkserver, 6 s with the forkserver's start, 15-17 s spawned. OpenCV's pool is switched off
inside each worker before its first call (one core per worker). A stalled worker is not waited on for ever:
after `data.stall_seconds` without a batch the stream raises `DataStall`, naming its pid.

Corrupt samples: with data.on_corrupt=skip each one is logged once (main process) and counted;
the count is logged at the end of every epoch.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import threading
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


START_METHOD = "forkserver"  # see the module docstring: workers never inherit a thread pool
_PRELOAD = ["torch", "cv2", "unetdist.data.pipeline"]  # imported once, in the forkserver


class DataStall(RuntimeError):
    """No batch for `data.stall_seconds`; the message names the stuck worker and what to do."""


def _worker_init(_: int) -> None:
    """Each worker: OpenCV single-threaded before its first call (one core per worker)."""
    import cv2

    cv2.setNumThreads(0)


def _hang_here(g: int, hang_at: int | None) -> None:
    """Test-only (train.faults' `worker_stall`): the worker making batch HANG_AT never returns."""
    if g == hang_at:
        threading.Event().wait()


class _RunDataset(torch.utils.data.IterableDataset):
    """Every epoch of one rank from global batch `start`; worker w makes start+w, start+w+W..."""

    def __init__(self, spec: StreamSpec, start: int, use_cache: bool,
                 cache: SampleCache | None, hang_at: int | None = None) -> None:
        self.spec, self.start, self.use_cache, self.cache = spec, start, use_cache, cache
        self.hang_at = hang_at

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
                for i, batch in enumerate(stream_batches(spec, step % n, step // n, count, cache)):
                    _hang_here(g + i * n, self.hang_at)
                    yield batch
                g += count * n
        except DataError as e:
            yield {"_error": str(e)}


def _context() -> multiprocessing.context.BaseContext:
    context = multiprocessing.get_context(START_METHOD)
    if START_METHOD == "forkserver":
        context.set_forkserver_preload(_PRELOAD)  # no effect once the server runs
    return context


def start_worker_server() -> None:
    """Start the forkserver now (not at the first loader): its imports then overlap the
    trainer's staging and setup instead of delaying step 1."""
    if START_METHOD == "forkserver":
        _context()
        from multiprocessing import forkserver

        forkserver.ensure_running()


def _make_loader(dataset, workers: int, seed: int, stall_seconds: float = 0.0):
    gen = torch.Generator().manual_seed(seed)  # never advances the trainer's global RNG
    context = _context() if workers else None
    return torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=workers, collate_fn=_identity,
        prefetch_factor=2 if workers else None, pin_memory=torch.cuda.is_available(),
        generator=gen, multiprocessing_context=context,
        worker_init_fn=_worker_init if workers else None,
        timeout=stall_seconds if workers else 0)


def _stall_message(it, waited_for: int, workers: int, stall_seconds: float) -> str:
    """One line: which worker owes batch WAITED_FOR (round-robin from the loader's start)."""
    procs = getattr(it, "_workers", [])  # torch's worker processes, in worker-id order
    pid = procs[waited_for % workers].pid if len(procs) == workers else None
    who = f"pid {pid}" if pid else "pid unknown"
    stack = f"py-spy dump --pid {pid}" if pid else "py-spy dump --pid <worker pid>"
    return (f"no batch for {stall_seconds:g} s from loader worker {who} "
            f"(data.num_workers={workers}); stack: {stack}; try data.num_workers=0")


def _checked(batch: dict, skipped: _SkipLog) -> dict:
    if "_error" in batch:
        raise DataError(batch["_error"])
    for key, shard, why in batch.pop("_bad"):
        skipped.add(key, shard, why)
    return batch


def run_batches(cfg: DataConfig, shard_dir: str, *, seed: int, rank: int, world_size: int,
                start_batch: int = 0, hang_at: int | None = None) -> Iterator[dict]:
    """This rank's batches from global batch START_BATCH on, epoch after epoch, endlessly.

    Batches are dicts of CPU tensors: image float32 (B,C,h,w), label uint8 (B,1,h,w) class
    indices ({0,1} for binary shards, 255 = ignore), fov uint8 (B,1,h,w) in {0,1}, key
    list[str]. Batch g is step `g % steps_per_epoch` of epoch `g // steps_per_epoch`,
    deterministic in (seed, epoch, rank, data.num_workers); started at START_BATCH=k it yields
    what the uninterrupted stream yields after k batches. Close the generator to stop the
    workers. Raises `DataStall` when workers make no batch for `data.stall_seconds`; HANG_AT
    (test-only) makes the worker owing that global batch hang.
    """
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} out of range for world size {world_size}")
    shards = tuple(split_shards(shard_dir, "train", cfg.fold))
    spec = StreamSpec(cfg, shards, seed, 0, rank, world_size, 0, max(1, cfg.num_workers))
    skipped = _SkipLog("training")
    if cfg.cache:
        for key, shard, why in fill_cache(sorted(shards, key=lambda s: s.name), cfg):
            skipped.add(key, shard, why)
    ship = CACHE if cfg.num_workers and cfg.cache else None  # workers are never forked
    dataset = _RunDataset(spec, start_batch, cfg.cache, ship, hang_at)
    loader = _make_loader(dataset, cfg.num_workers, spec.seed_for(0xDA7A), cfg.stall_seconds)
    it = iter(loader)
    g = start_batch
    while True:
        try:
            batch = next(it)
        except RuntimeError as e:
            if "DataLoader timed out" not in str(e):
                raise
            raise DataStall(_stall_message(it, g - start_batch, cfg.num_workers,
                                           cfg.stall_seconds)) from None
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


__all__ = ["DataStall", "EvalStream", "ShardInfo", "count_samples", "eval_samples", "run_batches",
           "start_worker_server"]
