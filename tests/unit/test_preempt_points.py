"""The preemption flag is also polled inside validation and before a checkpoint (in-process,
one CPU process): a signal that arrives while validating stops the run at that step, with a
checkpoint, the PREEMPTED marker, and neither validation metrics nor best/ from the cut run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.util import synthetic_shards
from unetdist.config import load_config


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return synthetic_shards(tmp_path_factory.mktemp("preempt-data"), n_train=6,
                            seed=4, split_val=0.34)


@pytest.fixture
def run(shards, tmp_path):
    from unetdist.distributed import forget_accelerator_state
    from unetdist.train.setup import setup_run, training_accelerator

    cfg = load_config(None, [f"data.shared_dir={shards}", f"train.run_dir={tmp_path / 'run'}",
                             "model.width=8", "model.depth=2", "data.channels=gray",
                             "data.crop=32", "data.batch_size=2", "data.num_workers=0",
                             "train.max_steps=6", "train.eval_every=2", "train.log_every=1",
                             "checkpoint.every_steps=2", "train.progress=false",
                             "track.wandb.mode=disabled", "eval.tile=64"])
    run = setup_run(cfg, training_accelerator(cfg), str(shards))
    yield run
    run.tracker.finish()
    run.lock.release()
    forget_accelerator_state()


class Flag:
    """A PreemptionFlag without signal handlers; the test decides when it is set."""

    def __init__(self) -> None:
        self.received: list[str] = []

    @property
    def requested(self) -> bool:
        return bool(self.received)

    @property
    def interrupted(self) -> bool:  # Ctrl-C: the user's stop (exit 130, no PREEMPTED)
        return "SIGINT" in self.received


def test_a_signal_during_validation_checkpoints_that_step_and_stops(run, monkeypatch):
    from unetdist.track.jsonl import read_records
    from unetdist.train import loop, validation

    flag, real = Flag(), validation.eval_samples

    def signal_while_validating(*args, **kw):  # the signal lands as validation starts
        flag.received.append("SIGUSR1")
        return real(*args, **kw)

    monkeypatch.setattr(validation, "eval_samples", signal_while_validating)
    result = loop.train_loop(run, flag)
    assert result.preempted and result.step == 2
    assert (run.run_dir / "PREEMPTED").read_text().strip() == "2"
    assert (run.run_dir / "checkpoints" / "step-000002" / "trainer_state.json").is_file()
    assert not (run.run_dir / "best").exists()  # the cut validation chose no best model
    recs = read_records(run.run_dir / "metrics.jsonl")
    assert [r["step"] for r in recs if r["split"] == "val"] == []
    assert [r["step"] for r in recs if r["split"] == "train"][-1] == 2


def test_a_signal_before_a_checkpoint_makes_it_the_last_one(run, monkeypatch):
    from unetdist.train import loop

    flag, real = Flag(), loop.checkpoint_due

    def due_and_signalled(run_, stats):  # after the step's own agreement, before the save
        due = real(run_, stats)
        if due and run_.state.step == 4:
            flag.received.append("SIGTERM")
        return due

    monkeypatch.setattr(loop, "checkpoint_due", due_and_signalled)
    monkeypatch.setattr(loop, "validation_due", lambda run_: False)
    result = loop.train_loop(run, flag)
    assert result.preempted and result.step == 4
    assert (run.run_dir / "PREEMPTED").read_text().strip() == "4"
    names = sorted(p.name for p in (run.run_dir / "checkpoints").glob("step-*"))
    assert names == ["step-000002", "step-000004"]
