"""Shared test helpers: free ports, distributed launches, CI-aware skips, polling."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IN_CI = os.environ.get("CI", "").lower() == "true"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require(ok: bool, reason: str) -> None:
    """Skip when a real dependency is missing, but fail under CI=true: CI must run everything."""
    if ok:
        return
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


def subprocess_env(**extra: str) -> dict:
    """Environment for subprocesses: one thread per process, no user accelerate config."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               WANDB_MODE=env.get("WANDB_MODE", "disabled"), TOKENIZERS_PARALLELISM="false")
    env.update(extra)
    return env


def cli(*args: str, env: dict | None = None, timeout: float = 300,
        cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """`unetdist ARGS` run in this process (see tests/inproc.py), output and status captured.

    TIMEOUT is kept for call compatibility with `cli_subprocess`; pytest-timeout bounds the test.
    """
    from tests.inproc import run_main

    return run_main([str(a) for a in args], env=env or subprocess_env(), cwd=cwd)


def cli_subprocess(*args: str, env: dict | None = None, timeout: float = 300,
                   cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m unetdist ARGS` in a new interpreter: for what needs a real process."""
    return subprocess.run([sys.executable, "-m", "unetdist", *map(str, args)], check=False,
                          capture_output=True, text=True, env=env or subprocess_env(),
                          timeout=timeout, cwd=cwd)


def accelerate_cmd(nproc: int = 2, port: int | None = None) -> list[str]:
    """`accelerate launch` for NPROC CPU processes over gloo on a free port."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
            "--num_processes", str(nproc), "--num_machines", "1", "--mixed_precision", "no",
            "--dynamo_backend", "no", "--main_process_port", str(port or free_port())]


def launch(module_args: list[str], nproc: int = 2, env: dict | None = None,
           timeout: float = 300, cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """Run `accelerate launch ... -m unetdist ARGS` (or `... script.py ARGS` for a .py path)."""
    target = ["-m", "unetdist"] if not str(module_args[0]).endswith(".py") else []
    cmd = accelerate_cmd(nproc) + target + [str(a) for a in module_args]
    return subprocess.run(cmd, check=False, capture_output=True, text=True,
                          env=env or subprocess_env(),
                          timeout=timeout, cwd=cwd)


def wait_for(predicate, timeout: float = 120, interval: float = 0.1, what: str = "condition"):
    """Poll instead of sleeping a fixed time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def synthetic_shards(root: Path, *, n_train: int, seed: int, split_val: float = 0.0,
                     n_test: int = 0, size: tuple[int, int] = (64, 64)) -> Path:
    """A small synthetic DRIVE-layout dataset under ROOT/raw, sharded into ROOT/shards."""
    from unetdist.data.ingest.synth import write_synthetic
    from unetdist.data.ingest.writer import shard_dataset

    raw = write_synthetic(root / "raw", n_train=n_train, n_test=n_test, size=size, seed=seed,
                          progress=False)
    shard_dataset(raw, root / "shards", layout="drive", split_val=split_val, progress=False)
    return root / "shards"


_slot: dict = {}  # this worker's lock files and what it holds ("mode": "shared"/"exclusive")


def _lock_files(config: pytest.Config) -> dict:
    if not _slot:  # in the run's own temporary folder, which both workers' folders are in
        folder = Path(config.option.basetemp).parent
        _slot.update({name: os.open(folder / f"{name}.lock", os.O_RDWR | os.O_CREAT, 0o600)
                      for name in ("turn", "run")}, mode=None)
    return _slot


HEAVY_MARKS = ("slow", "dist", "slurm")  # what starts trainings, launches or clusters


def is_heavy(item: pytest.Item) -> bool:
    return any(item.get_closest_marker(m) for m in HEAVY_MARKS)


def _release(locks: dict) -> None:
    if locks["mode"] is not None:
        fcntl.flock(locks["run"], fcntl.LOCK_UN)
        locks["mode"] = None


@contextlib.contextmanager
def exclusive_slot(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Under pytest-xdist, a heavy test (slow, dist, slurm) runs holding the run lock shared,
    an `exclusive` one holding it alone: it waits for the other worker's heavy test to end, and
    the other worker's heavy tests wait for it (or for a row of exclusive tests on this worker).
    The turn lock makes a waiting exclusive test go next, before the other worker's next heavy
    test. A light test (one process, nothing launched) takes no lock: one more busy core does
    not make a clock-bound test late the way a training's processes do, and the other worker
    gets through the light tests instead of idling. Without xdist: nothing."""
    if "PYTEST_XDIST_WORKER" not in os.environ or not item.config.option.basetemp:
        yield
        return
    locks = _lock_files(item.config)
    exclusive = item.get_closest_marker("exclusive") is not None
    if not exclusive and not is_heavy(item):
        _release(locks)
        yield
        return
    want = "exclusive" if exclusive else "shared"
    if locks["mode"] != want:
        fcntl.flock(locks["turn"], fcntl.LOCK_EX)
        try:
            fcntl.flock(locks["run"], fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        finally:
            fcntl.flock(locks["turn"], fcntl.LOCK_UN)
        locks["mode"] = want
    try:
        yield
    finally:
        if not (exclusive and nextitem is not None
                and nextitem.get_closest_marker("exclusive")):
            _release(locks)
