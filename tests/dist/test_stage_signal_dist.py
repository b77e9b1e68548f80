"""Issue 24 case 13: a 2-process training blocked on another process's staging lock ends on
SIGTERM, every rank within 2 s with exit status 143 (it used to run on until
data.stage_timeout: local rank 0's preemption handler only sets a flag)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.unit.test_stage import make_shard_dir
from tests.util import REPO, accelerate_cmd, subprocess_env, wait_for

pytestmark = [pytest.mark.dist, pytest.mark.slow, pytest.mark.exclusive]  # every rank within 2 s


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            children.setdefault(int(_stat(stat)[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError):
            continue  # exited meanwhile
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(0), [])
        out += kids
        todo += kids
    return out


def _stat(path: Path) -> list[str]:
    """/proc/PID/stat fields after the command name: [state, ppid, ...]."""
    return path.read_text().rsplit(")", 1)[1].split()


def _local_rank(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    ranks = [int(v.split(b"=", 1)[1]) for v in env if v.startswith(b"LOCAL_RANK=")]
    # the rank itself, not the loader's forkserver it starts early (same env, `unetdist` in its
    # preload list): that helper dies of SIGTERM by default, which says nothing about the rank
    is_rank = b"unetdist" in cmd and b"forkserver" not in cmd
    return ranks[0] if ranks and is_rank else None


def _exit_status(pid: int) -> int | None:
    """The exit status of a zombie (field 52 of /proc/PID/stat, waitpid form), else None."""
    fields = _stat(Path(f"/proc/{pid}/stat"))
    return os.waitstatus_to_exitcode(int(fields[-1])) if fields[0] == "Z" else None


def _all_exited(workers: dict[int, int]) -> dict[int, int] | None:
    status = {r: _exit_status(p) for r, p in workers.items()}
    return status if None not in status.values() else None


def test_sigterm_ends_every_rank_waiting_for_a_staging_lock(tmp_path):
    from filelock import FileLock

    from unetdist.data.stage.copy import lock_path, state_dir

    shared, local, log = tmp_path / "shared", tmp_path / "local", tmp_path / "log"
    make_shard_dir(shared, n=2, size=1000)
    state_dir(local).mkdir(parents=True)
    held = FileLock(str(lock_path(local)))
    held.acquire()  # another job staging into the same local folder, for as long as it likes
    cmd = accelerate_cmd(2) + [
        "-m", "unetdist", "train", f"data.shared_dir={shared}", f"data.local_dir={local}",
        "data.stage_timeout=600", f"train.run_dir={tmp_path / 'run'}", "model.width=8",
        "track.wandb.mode=off"]
    with open(log, "w") as out:  # a session of its own: its group is the launcher's alone
        launcher = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                    env=subprocess_env(), start_new_session=True)
    try:
        wait_for(lambda: "another process is staging into" in log.read_text()
                 and "local rank 1: waiting for local rank 0" in log.read_text(),
                 timeout=240, what="both ranks to say that they wait for the lock")
        workers = {r: p for p in _descendants(launcher.pid) if (r := _local_rank(p)) is not None}
        assert sorted(workers) == [0, 1], workers
        # The launcher reaps its workers; stopped, it leaves them as zombies whose status we read.
        os.kill(launcher.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        for group in {launcher.pid, *(os.getpgid(p) for p in workers.values())}:
            os.killpg(group, signal.SIGTERM)  # the whole launch, as Slurm or a shell would
        status = wait_for(lambda: _all_exited(workers), timeout=10, interval=0.02,
                          what="both ranks to exit")
        elapsed = time.monotonic() - t0
        os.kill(launcher.pid, signal.SIGCONT)
        launcher.wait(timeout=60)
    finally:
        held.release()
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    text = log.read_text()
    assert status == {0: 143, 1: 143}, text
    assert elapsed < 2.0, (elapsed, text)
    assert "stage: SIGTERM while waiting for the staging lock" in text, text
    assert "local rank 1: SIGTERM while waiting for local rank 0 to stage" in text, text
    assert not (tmp_path / "run").exists()
