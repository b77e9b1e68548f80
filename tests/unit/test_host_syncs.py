"""Host syncs per optimizer step, counted with a CPU fake.

On a GPU every read of a device value (`.item()`, `.tolist()`, `float(t)`, `bool(t)`, ...) and
every blocking host-to-device copy (a tensor built from Python values with `device=`, or
`.to(device)` without non_blocking) stalls the host until the queue drains. On CPU nothing
stalls, so these calls are counted instead: the trainer's step must make at most one (the
read-back of its agreement all-reduce), on logging steps as on the others. Reads are counted
wherever they happen (torch, accelerate, us); copies only where our code makes them, because
on CPU the fake cannot tell a library's same-device `.to(grad.device)` (a no-op on a GPU, as
in clip_grad_norm_) from a transfer. Reads inside torch.optim are not counted either: Adam's
step counters live on the host by design (unless `capturable`), so reading them never waits
for a GPU.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import pytest
import torch

from unetdist.config import load_config

READS = ("item", "tolist", "__float__", "__int__", "__bool__", "__index__", "numpy", "cpu")


def _caller(depth: int = 3) -> str:
    return sys._getframe(depth).f_globals.get("__name__", "")


def _ours() -> bool:
    """Whether the caller of the patched function is unetdist code (or this test)."""
    return _caller().startswith(("unetdist", "tests."))


class SyncCounter:
    """Patches torch.Tensor's read-backs and blocking copies; counts calls inside `counting`."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.active = False

    def _count(self, name: str) -> None:
        if self.active:
            self.calls.append(name)

    @contextlib.contextmanager
    def patched(self):
        mp = pytest.MonkeyPatch()
        for name in READS:
            orig = getattr(torch.Tensor, name)

            def wrapper(t, *a, _orig=orig, _name=name, **kw):
                if not _caller(2).startswith("torch.optim"):
                    self._count(_name)
                was, self.active = self.active, False  # nested calls count once
                try:
                    return _orig(t, *a, **kw)
                finally:
                    self.active = was
            mp.setattr(torch.Tensor, name, wrapper)
        orig_to, orig_tensor = torch.Tensor.to, torch.tensor

        def to(t, *a, **kw):
            if any(isinstance(x, (torch.device, str)) for x in (*a, kw.get("device"))) \
                    and not kw.get("non_blocking", False) and True not in a and _ours():
                self._count("to(device)")
            return orig_to(t, *a, **kw)

        def tensor(*a, **kw):
            if kw.get("device") is not None and _ours():
                self._count("tensor(device=)")
            return orig_tensor(*a, **kw)
        mp.setattr(torch.Tensor, "to", to)
        mp.setattr(torch, "tensor", tensor)
        try:
            yield self
        finally:
            mp.undo()

    @contextlib.contextmanager
    def counting(self):
        start, self.active = len(self.calls), True
        try:
            yield
        finally:
            self.active = False
            self.last = self.calls[start:]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    from unetdist.data.ingest.synth import write_synthetic
    from unetdist.data.ingest.writer import shard_dataset

    root = tmp_path_factory.mktemp("sync-data")
    raw = write_synthetic(root / "raw", n_train=4, n_test=0, size=(64, 64), seed=2,
                          progress=False)
    shard_dataset(raw, root / "shards", layout="drive", split_val=0.0, progress=False)
    return root / "shards"


@pytest.fixture
def fresh_accelerate():
    from accelerate.state import AcceleratorState

    yield
    AcceleratorState._reset_state(True)


def _run(shards: Path, tmp_path: Path, *extra: str):
    from unetdist.train.setup import make_accelerator, setup_run

    cfg = load_config(None, [f"data.shared_dir={shards}", f"train.run_dir={tmp_path / 'run'}",
                             "model.width=8", "model.depth=2", "data.channels=gray",
                             "data.crop=32", "data.batch_size=2", "data.num_workers=0",
                             "train.max_steps=6", "train.log_every=3", "train.progress=false",
                             "track.wandb.mode=disabled", "loss.pos_weight=3", *extra])
    acc = make_accelerator(cfg)
    return setup_run(cfg, acc, str(shards))


@pytest.mark.parametrize("extra", [(), ("train.grad_accum=2", "loss.name=cldice",
                                        "optim.grad_clip=0", "model.channels_last=true")])
def test_at_most_one_host_sync_per_optimizer_step(shards, tmp_path, fresh_accelerate, extra):
    from unetdist.train.loop import batch_stream, log_step, progress_bar, train_step
    from unetdist.train.preempt import PreemptionFlag

    run = _run(shards, tmp_path, *extra)
    stream, bar, window = batch_stream(run), progress_bar(run), []
    counter, per_step, losses = SyncCounter(), [], []
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
    # step 1 may make per-device constants once (the loss's pos_weight): not a per-step cost
    assert all(len(c) <= 1 for c in per_step[1:]), per_step
    assert all(c == ["tolist"] for c in per_step[1:])  # the agreement's read-back, no other
    assert all(l > 0 and l == l for l in losses)  # the one read carries real values
    assert stats.grad_norm > 0 and stats.images == 2 * run.cfg.train.grad_accum


def test_the_counter_sees_the_syncs_it_must_catch():
    counter = SyncCounter()
    x = torch.ones(3)
    with counter.patched(), counter.counting():
        float(x.sum())
        x.sum().item()
        torch.tensor(2.0, device="cpu")
        x.to("cpu")
        x.to("cpu", non_blocking=True)  # not counted
        bool(x.any())
    assert counter.last == ["__float__", "item", "tensor(device=)", "to(device)", "__bool__"]
