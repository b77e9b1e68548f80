"""A run folder is data, not code: planted pickles never run, refused files are one line.

Each test takes the session's tiny single-process run (2 steps, one checkpoint), tampers with a
copy of it as someone with write access to shared storage could, and resumes with
`train.resume=auto`. They all train: slow tier.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.e2e.trust_helpers import one_error_line, plant, train_args
from tests.util import cli

pytestmark = pytest.mark.slow


@pytest.fixture
def trained(tiny_shards, tiny_run) -> tuple[Path, Path]:
    return tiny_shards, tiny_run


def _copy_run(trained, tmp_path: Path) -> tuple[Path, Path, Path]:
    shards, run = trained
    dst = tmp_path / "run"
    shutil.copytree(run, dst)
    return shards, dst, dst / "checkpoints" / "step-000002"


def test_planted_custom_checkpoint_pickle_is_refused_and_never_runs(trained, tmp_path):
    shards, run, ck = _copy_run(trained, tmp_path)
    marker = tmp_path / "PWNED"
    plant(ck / "custom_checkpoint_0.pkl", marker)
    r = cli(*train_args(shards, run, "train.max_steps=4"))
    assert not marker.exists(), "a pickle from the run folder was executed"
    assert r.returncode == 2, r.stderr[-3000:]
    line = one_error_line(r)
    assert "custom_checkpoint_0.pkl" in line and "step-000002" in line


@pytest.mark.parametrize("name", ["random_states_0.pkl", "optimizer.bin"])
def test_malicious_accelerate_pickle_is_one_error_line(trained, tmp_path, name):
    shards, run, ck = _copy_run(trained, tmp_path)
    marker = tmp_path / "PWNED"
    plant(ck / name, marker)
    r = cli(*train_args(shards, run, "train.max_steps=4"))
    assert not marker.exists()
    assert r.returncode == 2, r.stderr[-3000:]
    line = one_error_line(r)
    assert "step-000002" in line and ("refused" in line), line
    if name.endswith(".pkl"):  # checked by name before accelerate loads anything
        assert name in line


def test_scheduler_state_is_json_and_resume_continues_the_schedule(trained, tmp_path):
    import json

    shards, run, ck = _copy_run(trained, tmp_path)
    assert not list(ck.glob("*.pkl")) or all(p.name.startswith("random_states_")
                                             for p in ck.glob("*.pkl"))
    sched = json.loads((ck / "scheduler.json").read_text())
    assert sched["last_epoch"] == 2  # stepped once per optimizer step
    r = cli(*train_args(shards, run, "train.max_steps=4"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((run / "checkpoints" / "step-000004" / "scheduler.json")
                      .read_text())["last_epoch"] == 4


# ----------------------------------------------------------------------------- the run lock


def test_second_training_on_a_run_dir_is_refused_and_a_dead_holder_is_taken_over(trained,
                                                                                tmp_path):
    import json
    import signal
    import socket
    import subprocess
    import sys

    from tests.util import subprocess_env, wait_for

    shards, run, _ = _copy_run(trained, tmp_path)
    holder_file = run / ".unetdist.lock.json"
    first = subprocess.Popen(
        [sys.executable, "-m", "unetdist", *train_args(shards, run, "train.max_steps=4")],
        env=subprocess_env(UNETDIST_FAULT="stall:step=3"), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    try:
        holder = wait_for(lambda: holder_file.is_file() and json.loads(holder_file.read_text()),
                          timeout=120, what="the first training to take the lock")
        assert holder["pid"] == first.pid and holder["host"] == socket.gethostname()
        before = sorted(p.name for p in run.rglob("*"))
        r = cli(*train_args(shards, run, "train.max_steps=4"))
        assert r.returncode == 2, r.stderr[-3000:]
        line = one_error_line(r)
        for part in (str(run), socket.gethostname(), f"pid {first.pid}", holder["started"]):
            assert part in line, line
        assert sorted(p.name for p in run.rglob("*")) == before  # the refused one wrote nothing
    finally:
        first.send_signal(signal.SIGKILL)  # dies holding the lock: its record stays behind
        first.wait(timeout=60)
    assert holder_file.is_file()
    r = cli(*train_args(shards, run, "train.max_steps=4"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "took over the lock" in r.stderr and f"pid {first.pid}" in r.stderr
    assert not holder_file.exists()  # released at the end


def test_resume_with_changed_hyperparameters_warns_once_per_key(trained, tmp_path):
    shards, run, _ = _copy_run(trained, tmp_path)
    (run / "checkpoints" / ".tmp-step-000003").mkdir()  # a run killed while saving
    r = cli(*train_args(shards, run, "train.max_steps=3", "optim.lr=0.002", "seed=3",
                        "data.num_workers=0", "train.log_every=1"))
    assert r.returncode == 0, r.stderr[-3000:]
    warnings = [ln for ln in r.stderr.splitlines() if "changed hyperparameters" in ln]
    assert len(warnings) == 1, r.stderr
    assert "optim.lr: 0.001 -> 0.002" in warnings[0] and "seed: 0 -> 3" in warnings[0]
    assert "train.max_steps: 2 -> 3" in warnings[0]
    assert "log_every" not in warnings[0] and "run_dir" not in warnings[0]
    assert "removed 1 temporary file(s)/folder(s)" in r.stderr
    assert "checkpoints/.tmp-step-000003" in r.stderr
    assert not (run / "checkpoints" / ".tmp-step-000003").exists()


# ----------------------------------------------------------------------------- filesystem


@pytest.mark.parametrize("where", ["train.run_dir", "data.local_dir"])
def test_a_file_where_a_folder_belongs_is_one_error_line(trained, tmp_path, where):
    shards, _ = trained
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    run = blocker if where == "train.run_dir" else tmp_path / "run"
    r = cli(*train_args(shards, run, "train.max_steps=2", f"{where}={blocker}"))
    assert r.returncode == 2, r.stderr[-3000:]
    line = one_error_line(r)
    assert str(blocker) in line and where in line and "a file is in the way" in line
    assert blocker.read_text() == "a file"


def test_exported_models_and_predictions_are_readable_by_others(trained, tmp_path):
    import os

    shards, run = trained
    raw = shards.parent / "raw"
    old = os.umask(0o022)
    try:
        out = tmp_path / "shared" / "model.safetensors"
        r = cli("export", "--checkpoint", run / "best", "--format", "safetensors", "--out", out)
        assert r.returncode == 0, r.stderr
        r = cli("predict", "--checkpoint", out, "--images", raw / "test" / "images",
                "--out", tmp_path / "pred", "--quiet")
        assert r.returncode == 0, r.stderr
    finally:
        os.umask(old)
    (tmp_path / "blocker").write_text("a file")
    for fmt in ("safetensors", "onnx"):
        r = cli("export", "--checkpoint", run / "best", "--format", fmt, "--out",
                tmp_path / "blocker" / f"model.{fmt}")
        assert r.returncode == 2, r.stderr[-3000:]
        assert "a file is in the way" in one_error_line(r)
    preds = sorted((tmp_path / "pred").iterdir())
    assert len(preds) == 2 * len(list((raw / "test" / "images").iterdir()))  # mask + prob
    written = [out, run / "best" / "model.safetensors", *preds]
    for p in written:
        assert p.stat().st_mode & 0o777 == 0o644, (p, oct(p.stat().st_mode))
