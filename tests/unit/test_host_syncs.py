"""Host syncs per optimizer step, counted with a CPU fake.

What counts as a sync and why is in `unetdist.bench.syncs` (the same counter `unetdist bench
--gpu` uses on CPU): the trainer's step must make at most one (the read-back of its agreement
all-reduce), on logging steps as on the others.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from tests.util import synthetic_shards
from unetdist.bench.syncs import FakeSyncCounter
from unetdist.config import load_config


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return synthetic_shards(tmp_path_factory.mktemp("sync-data"), n_train=4,
                            seed=2, split_val=0.0)


@pytest.fixture
def fresh_accelerate():
    from unetdist.distributed import forget_accelerator_state

    yield
    forget_accelerator_state()


def _run(shards: Path, tmp_path: Path, *extra: str):
    from unetdist.train.setup import setup_run, training_accelerator

    cfg = load_config(None, [f"data.shared_dir={shards}", f"train.run_dir={tmp_path / 'run'}",
                             "model.width=8", "model.depth=2", "data.channels=gray",
                             "data.crop=32", "data.batch_size=2", "data.num_workers=0",
                             "train.max_steps=6", "train.log_every=3", "train.progress=false",
                             "track.wandb.mode=disabled", "loss.pos_weight=3", *extra])
    acc = training_accelerator(cfg)
    return setup_run(cfg, acc, str(shards))


@pytest.mark.parametrize("extra", [(), ("train.grad_accum=2", "loss.name=cldice",
                                        "optim.grad_clip=0", "model.channels_last=true")])
def test_at_most_one_host_sync_per_optimizer_step(shards, tmp_path, fresh_accelerate, extra):
    from unetdist.train.loop import batch_stream, log_step, progress_bar
    from unetdist.train.preempt import PreemptionFlag
    from unetdist.train.step import train_step

    run = _run(shards, tmp_path, *extra)
    stream, bar, window = batch_stream(run), progress_bar(run), []
    counter, per_step, losses = FakeSyncCounter(), [], []
    with counter.patched():
        for _ in range(run.cfg.train.max_steps):
            micro = [next(stream) for _ in range(run.cfg.train.grad_accum)]
            with counter.counting():
                stats = train_step(run, micro, PreemptionFlag())
                run.state.step += 1
                log_step(run, stats, window, bar)  # steps 3 and 6 write a record
            per_step.append(counter.last)
            losses.append(stats.loss)
    stream.close()
    run.tracker.finish()
    run.lock.release()
    # step 1 may make per-device constants once (the loss's pos_weight): not a per-step cost
    assert all(len(c) <= 1 for c in per_step[1:]), per_step
    assert all(c == ["tolist"] for c in per_step[1:])  # the agreement's read-back, no other
    assert all(math.isfinite(v) and v > 0 for v in losses)  # the one read carries real values
    assert stats.grad_norm > 0 and stats.images == 2 * run.cfg.train.grad_accum


def test_the_counter_sees_the_syncs_it_must_catch():
    counter = FakeSyncCounter(ours=("tests.",))
    x = torch.ones(3)
    with counter.patched(), counter.counting():
        float(x.sum())
        x.sum().item()
        torch.tensor(2.0, device="cpu")
        x.to("cpu")
        x.to("cpu", non_blocking=True)  # not counted
        bool(x.any())
    assert counter.last == ["__float__", "item", "tensor(device=)", "to(device)", "__bool__"]


def test_metric_update_copies_to_the_host_once_per_image():
    from unetdist.eval.metrics import MetricState

    g = torch.Generator().manual_seed(0)
    prob, label = torch.rand(1, 1, 40, 48, generator=g), torch.rand(1, 1, 40, 48, generator=g)
    fov, label2 = torch.ones(1, 1, 40, 48), (torch.rand(1, 1, 40, 48, generator=g) > 0.8)
    state, counter = MetricState(bins=100), FakeSyncCounter()
    with counter.patched(), counter.counting():
        row = state.update(prob, label > 0.9, fov, label2.float())
    # one device-to-host copy; the rest reads the host copy (no GPU sync: `flat` is on the CPU)
    assert counter.last.count("cpu") == 1, counter.last
    assert set(counter.last) <= {"cpu", "tolist", "numpy"}
    assert sum(row["counts"].values()) == 40 * 48 and sum(row["image_counts"].values()) == 40 * 48
