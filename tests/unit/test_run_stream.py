"""The run-long training stream: one DataLoader across epochs, batch for batch what the
per-epoch streams make, from any resume position (so exact resume survives persistent workers)."""

from __future__ import annotations

from itertools import islice

import pytest
import torch

from tests.unit.test_pipeline import data_cfg, run_train, same_batches, samples, write_shards
from unetdist.data.pipeline import run_batches


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("run-stream")
    write_shards(root, {"train": samples(10, "t")}, per_shard=3)  # 4 shards
    return root


@pytest.mark.parametrize("workers,cache", [(0, False), (2, False), (2, True), (3, True)])
def test_run_stream_equals_the_per_epoch_streams_from_any_start(root, workers, cache):
    cfg = data_cfg(num_workers=workers, cache=cache, steps_per_epoch=4)
    per_epoch = [b for e in range(3) for b in run_train(cfg, root, epoch=e, rank=1,
                                                        world_size=2)]
    for start in (0, 3, 5):
        gen = run_batches(cfg, str(root), seed=7, rank=1, world_size=2, start_batch=start)
        got = list(islice(gen, len(per_epoch) - start))
        gen.close()  # stops the workers
        assert same_batches(got, per_epoch[start:]), (workers, cache, start)


def test_training_batches_carry_masks_as_uint8(root):
    gen = run_batches(data_cfg(), str(root), seed=7, rank=0, world_size=1)
    b = next(gen)
    gen.close()
    assert b["label"].dtype == b["fov"].dtype == torch.uint8
    assert b["image"].dtype == torch.float32
    assert set(b["fov"].unique().tolist()) <= {0, 1} and b["fov"].sum() > 0
