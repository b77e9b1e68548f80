"""Waiting local ranks: signals end them promptly, and local rank 0's failure is always seen."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest

from tests.unit.test_stage import make_shard_dir
from tests.util import REPO, subprocess_env, wait_for
from unetdist.data.stage import copy as stage_io
from unetdist.data.stage.node import load_source
from unetdist.data.stage.wait import job_token, record_failure, wait_for_stage
from unetdist.errors import DataError


@pytest.fixture
def shared(tmp_path):
    src = tmp_path / "shared"
    make_shard_dir(src, n=2, size=1000)
    return src


@pytest.mark.slow  # a real `unetdist train` process (it never gets to train)
@pytest.mark.exclusive  # the rank ends within 10 s of the signal
@pytest.mark.parametrize("sig,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_ends_a_waiting_rank_at_once(shared, tmp_path, sig, status):
    """The real path: `unetdist train` on local rank 1, whose local rank 0 never stages."""
    log = tmp_path / "stderr"
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "unetdist", "train", f"data.shared_dir={shared}",
             f"data.local_dir={tmp_path / 'local'}", "data.stage_timeout=300",
             f"train.run_dir={tmp_path / 'run'}", "model.width=8"],
            env=subprocess_env(LOCAL_RANK="1"), cwd=REPO, stdout=subprocess.DEVNULL,
            stderr=err)
    try:
        wait_for(lambda: "waiting for local rank 0" in log.read_text() or proc.poll() is not None,
                 timeout=120, what="the rank to wait")
        assert proc.poll() is None, log.read_text()
        t0 = time.monotonic()
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == status, log.read_text()
        assert time.monotonic() - t0 < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert f"{sig.name} while waiting for local rank 0" in log.read_text()
    assert not (tmp_path / "run").exists()


def test_a_failure_recorded_before_the_rank_starts_waiting_is_seen(shared, tmp_path):
    dst = tmp_path / "local"
    _, manifest, shards = load_source(shared)
    record_failure(dst, RuntimeError("disk on fire"))  # local rank 0 was quick to fail
    time.sleep(0.05)  # the waiter starts strictly later (the race of issue 15)
    t0 = time.monotonic()
    with pytest.raises(DataError, match="local rank 0 failed to stage .*disk on fire"):
        wait_for_stage(shared, dst, manifest, shards, 5.0, local_rank=1)
    assert time.monotonic() - t0 < 3


def test_a_stale_failure_of_another_job_is_ignored(shared, tmp_path):
    dst = tmp_path / "local"
    _, manifest, shards = load_source(shared)
    stage_io.state_dir(dst).mkdir(parents=True)
    note = {"time": time.time() - 3600, "job": "otherhost:1:1:0", "error": "old news"}
    stage_io.failure_path(dst).write_text(json.dumps(note))
    assert job_token() != note["job"]
    with pytest.raises(DataError, match="timed out after 1s"):
        wait_for_stage(shared, dst, manifest, shards, 1.0, local_rank=1)


@pytest.mark.slow
@pytest.mark.exclusive  # within 2 s of the signal
@pytest.mark.parametrize("sig,status", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_ends_local_rank_0_waiting_for_another_jobs_lock(shared, tmp_path, sig, status):
    """Issue 24 case 13: the copier of `train` waiting for another job's staging lock used to
    ignore both signals (its preemption handler only sets a flag) until data.stage_timeout."""
    from filelock import FileLock

    local, log = tmp_path / "local", tmp_path / "stderr"
    stage_io.state_dir(local).mkdir(parents=True)
    held = FileLock(str(stage_io.lock_path(local)))
    held.acquire()
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "unetdist", "train", f"data.shared_dir={shared}",
             f"data.local_dir={local}", "data.stage_timeout=300",
             f"train.run_dir={tmp_path / 'run'}", "model.width=8"],
            env=subprocess_env(LOCAL_RANK="0"), cwd=REPO, stdout=subprocess.DEVNULL,
            stderr=err)
    try:
        wait_for(lambda: "another process is staging into" in log.read_text()
                 or proc.poll() is not None, timeout=120, what="the copier to wait")
        assert proc.poll() is None, log.read_text()
        t0 = time.monotonic()
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == status, log.read_text()
        assert time.monotonic() - t0 < 2
    finally:
        held.release()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert f"stage: {sig.name} while waiting for the staging lock" in log.read_text()
    assert not (tmp_path / "run").exists()
