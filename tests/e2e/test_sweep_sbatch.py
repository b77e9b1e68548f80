"""slurm/kfold.sbatch and slurm/sweep.sbatch run as plain bash with stand-ins for what they
start (train.sbatch, the wandb agent): the arguments they hand on and their errors. The real
array on the Slurm test cluster is tests/slurm/test_sweep_slurm.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from tests.util import REPO, cli, subprocess_env

pytestmark = pytest.mark.slow


def _bash(script: str, *args, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(REPO / "slurm" / script), *map(str, args)],
                          capture_output=True, text=True, env=subprocess_env(**env),
                          timeout=120, check=False)


def test_kfold_task_runs_train_sbatch_with_its_trial(tmp_path):
    (tmp_path / "base.yaml").write_text("model: {width: 8}\n")
    spec = {"config": str(tmp_path / "base.yaml"), "out": str(tmp_path / "sw"),
            "parameters": {"optim.lr": [0.001, 0.003], "seed": [0, 1]}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    assert cli("sweep", tmp_path / "s.yaml", "--launch", "none").returncode == 0
    fake = tmp_path / "train.sbatch"  # records what it was given
    fake.write_text('echo "CONFIG=$CONFIG"; printf "%s\\n" "$@"\n')
    r = _bash("kfold.sbatch", tmp_path / "sw", "data.num_workers=0", SLURM_ARRAY_TASK_ID="2",
              TRAIN_SBATCH=str(fake), PYTHON=sys.executable)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert f"CONFIG={tmp_path / 'base.yaml'}" in lines
    assert lines[-4:] == ["optim.lr=0.003", "seed=0",
                          f"train.run_dir={tmp_path / 'sw' / 'trial-002'}", "data.num_workers=0"]
    r = _bash("kfold.sbatch", tmp_path / "sw", TRAIN_SBATCH=str(fake), PYTHON=sys.executable)
    assert r.returncode == 2 and "submit as an array job" in r.stderr
    r = _bash("kfold.sbatch", tmp_path / "sw", SLURM_ARRAY_TASK_ID="9",
              TRAIN_SBATCH=str(fake), PYTHON=sys.executable)
    assert r.returncode != 0 and "trials 0-3" in r.stderr


def test_sweep_task_is_one_wandb_agent_run(tmp_path):
    fake_python = tmp_path / "python"
    fake_python.write_text('#!/bin/bash\nprintf "%s\\n" "$@"\n')
    os.chmod(fake_python, 0o755)
    r = _bash("sweep.sbatch", PYTHON=str(fake_python), SWEEP="me/proj/abc123")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-6:] == ["-m", "wandb", "agent", "--count", "1",
                                          "me/proj/abc123"]
    r = _bash("sweep.sbatch", PYTHON=str(fake_python))
    assert r.returncode == 2 and "set SWEEP" in r.stderr
