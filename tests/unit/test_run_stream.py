"""The run-long training stream: one DataLoader across epochs, batch for batch what the logical
streams of each epoch make (built here without a DataLoader), from any resume position, so
exact resume survives persistent workers and epoch boundaries."""

from __future__ import annotations

from itertools import islice

import pytest
import torch

from tests.unit.test_pipeline import data_cfg, same_batches, samples, write_shards
from unetdist.data.pipeline import run_batches
from unetdist.data.reader import split_shards
from unetdist.data.stream import StreamSpec, stream_batches


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("run-stream")
    write_shards(root, {"train": samples(10, "t")}, per_shard=3)  # 4 shards
    return root


def logical_batches(cfg, root, *, seed: int, rank: int, world_size: int, n: int) -> list[dict]:
    """Global batches 0..n-1 straight from stream.py: step s of epoch e is batch s // W of
    logical stream s % W (W = max(1, workers)), whichever DataLoader worker runs it."""
    shards = tuple(split_shards(str(root), "train", cfg.fold))
    streams = max(1, cfg.num_workers)
    out = []
    for g in range(n):
        epoch, step = divmod(g, cfg.steps_per_epoch)
        spec = StreamSpec(cfg, shards, seed, epoch, rank, world_size, 0, streams)
        batch = next(stream_batches(spec, step % streams, step // streams, 1, None))
        batch.pop("_bad")
        out.append(batch)
    return out


def take(cfg, root, start: int, n: int, **kw) -> list[dict]:
    gen = run_batches(cfg, str(root), start_batch=start, **kw)
    try:
        return list(islice(gen, n))
    finally:
        gen.close()  # stops the workers


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
@pytest.mark.parametrize("workers,cache", [(0, False), (2, False), (2, True), (3, True)])
def test_run_stream_equals_the_logical_streams_from_any_start(root, workers, cache):
    cfg = data_cfg(num_workers=workers, cache=cache, steps_per_epoch=4)
    ref = logical_batches(cfg, root, seed=7, rank=1, world_size=2, n=12)  # 3 epochs
    for start in (0, 3, 5):
        got = take(cfg, root, start, len(ref) - start, seed=7, rank=1, world_size=2)
        assert same_batches(got, ref[start:]), (workers, cache, start)


def test_epochs_differ_and_an_epoch_is_steps_per_epoch_batches(root):
    cfg = data_cfg(steps_per_epoch=3)
    got = take(cfg, root, 0, 6, seed=7, rank=0, world_size=1)
    assert same_batches(got[3:], take(cfg, root, 3, 3, seed=7, rank=0, world_size=1))
    assert not same_batches(got[:3], got[3:])  # epoch 1 reshuffles and re-augments


def test_rank_out_of_range_is_refused(root):
    with pytest.raises(ValueError, match="rank 2 out of range for world size 2"):
        next(run_batches(data_cfg(), str(root), seed=7, rank=2, world_size=2))


def test_training_batches_carry_masks_as_uint8(root):
    gen = run_batches(data_cfg(), str(root), seed=7, rank=0, world_size=1)
    b = next(gen)
    gen.close()
    assert b["label"].dtype == b["fov"].dtype == torch.uint8
    assert b["image"].dtype == torch.float32
    assert set(b["fov"].unique().tolist()) <= {0, 1} and b["fov"].sum() > 0
