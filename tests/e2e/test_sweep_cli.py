"""`unetdist sweep SPEC.yaml` run locally the way the README shows it: every trial trains into
its own folder, the summary table ranks them, best.txt feeds an ensemble evaluation."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.util import cli, cli_subprocess, subprocess_env, synthetic_shards, wait_for

pytestmark = pytest.mark.slow

BASE = {"model": {"width": 8, "depth": 2},
        "data": {"crop": 48, "batch_size": 2, "num_workers": 0, "steps_per_epoch": 2},
        "train": {"max_steps": 2, "eval_every": 2, "progress": False},
        "eval": {"tile": 64, "batch_size": 1, "num_overlays": 0, "auc_bins": 100},
        "track": {"wandb": {"mode": "disabled"}}}


@pytest.mark.slow
def test_local_grid_sweep_trains_each_trial_and_summarises(tmp_path):
    assert cli("synth", tmp_path / "raw", "--n-train", 3, "--n-test", 1, "--size", "64x64",
               "--quiet").returncode == 0
    assert cli("shard", tmp_path / "raw", tmp_path / "shards", "--layout", "drive",
               "--split-val", "0.34", "--quiet").returncode == 0
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    spec = {"config": "base.yaml", "out": "runs/lr",
            "overrides": [f"data.shared_dir={tmp_path / 'shards'}"],
            "parameters": {"optim.lr": [1.0e-3, 1.0e-2]}}
    (tmp_path / "lr.yaml").write_text(yaml.safe_dump(spec))
    # a real process: the trials it starts write to the same stdout/stderr as the summary
    r = cli_subprocess("sweep", "lr.yaml", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "runs" / "lr"
    for i, lr in enumerate((1.0e-3, 1.0e-2)):
        cfg = yaml.safe_load((out / f"trial-00{i}" / "config.yaml").read_text())
        assert cfg["optim"]["lr"] == lr and (out / f"trial-00{i}" / "best").is_dir()
    dice = {f"trial-00{i}": json.loads((out / f"trial-00{i}" / "best" / "metrics.json")
                                       .read_text())["dice"] for i in range(2)}
    winner = max(sorted(dice), key=dice.get)
    assert "| trial " in r.stdout and f"best trial (by val dice):\n  {winner}" in r.stdout
    assert (out / "best.txt").read_text().strip() == str(out / winner / "best")
    assert (out / "summary.md").read_text().strip() in r.stdout
    # the trial arguments slurm/kfold.sbatch gets, and a re-run that resumes (nothing to do)
    r = cli("sweep", out, "--trial", "1", cwd=tmp_path)
    assert r.stdout.split("\n")[:2] == ["--config", str(tmp_path / "base.yaml")]
    assert "optim.lr=0.01" in r.stdout.split("\n")
    r = cli_subprocess("sweep", "lr.yaml", cwd=tmp_path)
    assert r.returncode == 0 and (out / "best.txt").read_text().strip().endswith("/best")


def test_sweep_errors_are_one_line(tmp_path):
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"parameters": {"optim.lr": [-1.0]}}))
    r = cli("sweep", "bad.yaml", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: sweep trial-000 (optim.lr=-1)")
    r = cli("sweep", tmp_path, "--summary", cwd=tmp_path)
    assert r.returncode == 2 and "not an expanded sweep" in r.stderr


def test_a_second_identical_sweep_names_the_trial_in_use_and_the_first_finishes(tmp_path):
    """Issue 24 case 14: both used to exit 1, each failing trials on the other's run locks."""
    shards = synthetic_shards(tmp_path, n_train=3, seed=0, split_val=0.34)
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(BASE))
    spec = {"config": "base.yaml", "out": "runs/lr",
            "overrides": [f"data.shared_dir={shards}"], "parameters": {"seed": [0, 1]}}
    (tmp_path / "lr.yaml").write_text(yaml.safe_dump(spec))
    out = tmp_path / "runs" / "lr"
    with open(tmp_path / "first.log", "w") as log:
        first = subprocess.Popen([sys.executable, "-m", "unetdist", "sweep", "lr.yaml"],
                                 cwd=tmp_path, env=subprocess_env(), stdout=log, stderr=log)
        try:
            holder = wait_for(lambda: _holder(out / "trial-000"), timeout=240,
                              what="the first sweep's trial-000 training to take its run lock")
            os.kill(holder["pid"], signal.SIGSTOP)  # trial-000 stays in use while we look
            try:
                second = cli("sweep", "lr.yaml", cwd=tmp_path)
            finally:
                os.kill(holder["pid"], signal.SIGCONT)
            assert first.poll() is None, "the first sweep ended before the second ran"
            rc = first.wait(timeout=600)
        finally:
            first.kill()
    assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
    assert second.stderr.startswith(f"error: sweep {Path('runs/lr')} is already running "
                                    f"(host {socket.gethostname()}, pid {first.pid}")
    assert (f"trial-000 is in use by its training (host {holder['host']}, "
            f"pid {holder['pid']}") in second.stderr
    assert rc == 0, (tmp_path / "first.log").read_text()[-3000:]
    for name in ("trial-000", "trial-001"):
        assert (out / name / "best" / "model.safetensors").is_file()
    assert not (out / ".unetdist.lock.json").exists()  # released: the next sweep may run


def _holder(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / ".unetdist.lock.json").read_text())
    except (OSError, ValueError):
        return None
