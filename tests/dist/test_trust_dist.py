"""Run-folder trust under real 2-process DDP: every rank refuses together, nobody hangs."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.e2e.trust_helpers import plant, train_args
from tests.util import launch, subprocess_env

pytestmark = [pytest.mark.dist, pytest.mark.slow]


def _errors(r) -> list[str]:
    return [ln for ln in (r.stdout + r.stderr).splitlines() if ln.startswith("error:")]


@pytest.fixture(scope="module")
def run2(tmp_path_factory) -> tuple[Path, Path]:
    from unetdist.data.ingest.synth import write_synthetic
    from unetdist.data.ingest.writer import shard_dataset

    root = tmp_path_factory.mktemp("trust-dist")
    raw = write_synthetic(root / "raw", n_train=4, n_test=0, size=(64, 64), seed=1,
                          progress=False)
    shard_dataset(raw, root / "shards", layout="drive", progress=False)
    r = launch(train_args(root / "shards", root / "run", "train.max_steps=2"),
               env=subprocess_env())
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    return root / "shards", root / "run"


def test_a_planted_rank_1_random_state_is_refused_on_both_ranks(run2, tmp_path):
    shards, run = run2
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    marker = tmp_path / "PWNED"
    plant(copy / "checkpoints" / "step-000002" / "random_states_1.pkl", marker)
    r = launch(train_args(shards, copy, "train.max_steps=4"), env=subprocess_env(), timeout=240)
    assert r.returncode != 0 and not marker.exists()
    errors = _errors(r)
    assert len(errors) == 2, r.stderr[-3000:]  # each rank names the same file, then stops
    assert all("refused random_states_1.pkl" in e for e in errors)
    assert not (copy / "checkpoints" / "step-000004").exists()


def test_a_locked_run_dir_stops_both_ranks_naming_the_holder(run2):
    from unetdist.train.runlock import RunLock

    shards, run = run2
    lock = RunLock(run)
    assert lock.acquire() is None  # the previous training released it cleanly
    try:
        t0 = time.monotonic()
        r = launch(train_args(shards, run, "train.max_steps=4"), env=subprocess_env(),
                   timeout=240)
        took = time.monotonic() - t0
    finally:
        lock.release()
    assert r.returncode != 0
    errors = _errors(r)
    assert len(errors) == 2 and len(set(errors)) == 1, r.stderr[-3000:]
    assert f"pid {os.getpid()}" in errors[0] and "is in use by another training" in errors[0]
    assert took < 120  # no rank was left waiting in a collective
    assert not (run / "checkpoints" / "step-000004").exists()
