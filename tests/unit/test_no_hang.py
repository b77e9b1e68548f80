"""Issue 23.1: loader workers never inherit a thread pool, a stalled worker stops the run with
one line and a checkpoint (data.stall_seconds), and the first Ctrl-C says what happens."""

from __future__ import annotations

import faulthandler
import os
import re
import signal
import time
from pathlib import Path

import pytest
import torch

from tests.util import synthetic_shards
from unetdist.config import load_config


def _threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError(f"no thread count for pid {pid}")


class _WhereAmI(torch.utils.data.IterableDataset):
    """Each worker yields its pid, its parent's pid, the parent's thread count, cv2's threads."""

    def __iter__(self):
        import cv2

        ppid = os.getppid()
        yield {"pid": os.getpid(), "ppid": ppid, "parent_threads": _threads(ppid),
               "cv2_threads": cv2.getNumThreads()}


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs /proc")
def test_workers_are_forked_from_a_single_threaded_server_not_from_the_trainer():
    import threading

    import cv2

    from unetdist.data.pipeline import _make_loader

    cv2.setNumThreads(4)  # a trainer whose OpenCV pool has run: what once hung a forked worker
    cv2.warpAffine(torch.zeros(512, 512).numpy(), cv2.getRotationMatrix2D((256, 256), 10, 1),
                   (512, 512))
    stop = threading.Event()
    busy = threading.Thread(target=stop.wait, daemon=True)  # and a thread of its own
    busy.start()
    try:
        assert _threads(os.getpid()) > 1
        got = list(_make_loader(_WhereAmI(), 2, seed=0))
    finally:
        stop.set()
    assert len(got) == 2 and len({g["pid"] for g in got}) == 2
    for g in got:
        assert g["ppid"] != os.getpid()  # not forked from this (multi-threaded) process
        assert g["parent_threads"] == 1  # the process it was forked from ran no thread pool
        assert g["cv2_threads"] == 1  # OpenCV single-threaded in the worker


def test_the_first_ctrl_c_says_at_once_that_it_stops(capfd, monkeypatch):
    from unetdist.train.preempt import PreemptionFlag

    monkeypatch.delenv("RANK", raising=False)
    with PreemptionFlag(signals=(signal.SIGINT,)) as flag:
        os.kill(os.getpid(), signal.SIGINT)
        assert flag.interrupted
        assert capfd.readouterr().err == "stopping at the next step; Ctrl-C again to abort\n"
        with pytest.raises(KeyboardInterrupt):  # the second one aborts
            os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setenv("RANK", "1")  # a launcher's other ranks: one line per job, not per rank
    with PreemptionFlag(signals=(signal.SIGINT,)) as flag:
        os.kill(os.getpid(), signal.SIGINT)
        assert flag.interrupted and capfd.readouterr().err == ""


def test_stall_seconds_must_be_positive():
    from unetdist.errors import ConfigError

    with pytest.raises(ConfigError, match="data.stall_seconds"):
        load_config(None, ["data.stall_seconds=0"])


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return synthetic_shards(tmp_path_factory.mktemp("nohang-data"), n_train=4, seed=5)


def _args(shards: Path, run_dir: Path, *extra: str) -> list[str]:
    return [f"data.shared_dir={shards}", f"train.run_dir={run_dir}", "model.width=8",
            "model.depth=2", "data.crop=64", "data.batch_size=2", "data.num_workers=2",
            "train.log_every=1", "checkpoint.every_steps=0", "train.progress=false",
            "track.wandb.mode=disabled", *extra]


@pytest.mark.slow
@pytest.mark.exclusive  # a batch later than data.stall_seconds=3 would be a false stall
def test_a_stalled_worker_stops_the_run_with_one_line_and_a_checkpoint(shards, tmp_path,
                                                                       monkeypatch, capsys):
    from unetdist.cli import main
    from unetdist.distributed import forget_accelerator_state

    monkeypatch.setenv("UNETDIST_FAULT", "worker_stall:batch=2")  # step 3's batch never comes
    run_dir = tmp_path / "run"
    t0 = time.monotonic()
    try:
        rc = main(["train", *_args(shards, run_dir, "train.max_steps=6",
                                   "data.stall_seconds=3")])
    finally:
        forget_accelerator_state()
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if "loader worker" in x]
    assert rc == 3, err
    assert len(lines) == 1, err
    assert re.fullmatch(r"error: no batch for 3 s from loader worker pid (\d+) "
                        r"\(data\.num_workers=2\); stack: py-spy dump --pid \1; try "
                        r"data\.num_workers=0; checkpoint of step 2 saved; run the same "
                        r"command to resume", lines[0]), lines[0]
    assert (run_dir / "checkpoints" / "step-000002" / "trainer_state.json").is_file()
    assert not (run_dir / "checkpoints" / "step-000003").exists()
    assert not (run_dir / "PREEMPTED").exists()  # a stall is no preemption: no requeue
    assert time.monotonic() - t0 < 120


@pytest.mark.slow
def test_many_short_trainings_with_workers_never_hang(shards, tmp_path):
    """UNETDIST_STRESS_RUNS (default 50) trainings in this process, each under a hard timeout
    (faulthandler kills the process with every thread's stack rather than hang the suite);
    before each, this process runs OpenCV's thread pool, as the trainer's cache fill does."""
    import cv2

    from unetdist.distributed import forget_accelerator_state
    from unetdist.train.loop import fit

    runs = int(os.environ.get("UNETDIST_STRESS_RUNS", "50"))
    image = torch.rand(1024, 1024).numpy()
    t0 = time.monotonic()
    for i in range(runs):
        cv2.setNumThreads(4)
        cv2.warpAffine(image, cv2.getRotationMatrix2D((512, 512), i, 1), (1024, 1024))
        cfg = load_config(None, _args(shards, tmp_path / f"run{i}", "train.max_steps=3",
                                      f"seed={i}"))
        faulthandler.dump_traceback_later(180, exit=True)
        try:
            result = fit(cfg)
        finally:
            faulthandler.cancel_dump_traceback_later()
            forget_accelerator_state()
        assert result.step == 3 and not result.preempted, i
    print(f"{runs} trainings with 2 workers in {time.monotonic() - t0:.0f} s")
