"""slurm/train.sbatch's own checks, run as plain bash before anything starts on a node.

The job stops with one `error:` line and exit 2 when a node has fewer CPUs than training
processes (cgroups would give 1 core to every rank and its loaders) and when the checkpoint
grace does not end before Slurm's kill. `scontrol` is a stand-in that names one node; `srun` is
one that reports what the first step (staging) would get, then fails it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.util import REPO, subprocess_env, synthetic_shards

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("sbatch-checks")
    shards = synthetic_shards(root, n_train=2, seed=3)
    (root / "tiny.yaml").write_text("model: {width: 8}\ndata: {num_workers: 0}\n")
    bin_dir = root / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho n1\n")
    (bin_dir / "srun").write_text("#!/bin/sh\necho \"srun reached cpus=$SRUN_CPUS_PER_TASK "
                                  "grace=$TORCH_ELASTIC_SHUTDOWN_TIMEOUT\" >&2\nexit 99\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return root, shards, bin_dir


def _run(job, **env: str) -> subprocess.CompletedProcess:
    root, shards, bin_dir = job
    base = {"CONFIG": str(root / "tiny.yaml"), "SHARED_DATA": str(shards),
            "PYTHON": sys.executable, "RUN_DIR": str(root / "run"), "SLURM_JOB_ID": "7",
            "SLURM_JOB_NODELIST": "n1", "SLURM_NNODES": "1", "MAIN_PORT": "29999",
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", str(REPO / "slurm" / "train.sbatch")], cwd=root,
                          capture_output=True, text=True, timeout=120, check=False,
                          env=subprocess_env(**{**base, **env}))


def _error_lines(r: subprocess.CompletedProcess) -> list[str]:
    return [ln for ln in r.stderr.splitlines() if "error:" in ln]


def test_fewer_cpus_than_processes_is_one_line_and_exit_2(job):
    r = _run(job, PROCS_PER_NODE="2", SLURM_CPUS_ON_NODE="1")
    assert r.returncode == 2, r.stderr
    (line,) = _error_lines(r)
    assert "1 CPU(s) per node for 2 training processes" in line and "--cpus-per-task" in line
    assert "srun reached" not in r.stderr


def test_grace_must_end_before_slurms_kill(job):
    r = _run(job, PROCS_PER_NODE="1", SLURM_CPUS_ON_NODE="4", SIGNAL_LEAD="60",
             PREEMPT_GRACE="90")
    assert r.returncode == 2, r.stderr
    (line,) = _error_lines(r)
    assert "PREEMPT_GRACE= 90 must be in (0, SIGNAL_LEAD=60)" in line


def test_enough_cpus_and_derived_grace_reach_the_launch(job):
    r = _run(job, PROCS_PER_NODE="2", SLURM_CPUS_ON_NODE="4", SIGNAL_LEAD="60")
    # both checks passed: the script went on, handing the CPUs and the derived grace on
    assert "srun reached cpus=4 grace=40" in r.stderr, r.stderr
    assert _error_lines(r) == ["[train.sbatch] error: staging failed"]  # the stand-in's exit 99
