"""Issue 18.3: a user's mistake under a launcher is one `error:` line (rank 0) and exit 2 through
launch/train.sh and slurm/train.sbatch, which validate in one process before launching."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from tests.util import REPO, cli, launch, subprocess_env


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from unetdist.data.ingest.synth import write_synthetic
    from unetdist.data.ingest.writer import shard_dataset

    root = tmp_path_factory.mktemp("launcher_errors")
    raw = write_synthetic(root / "raw", n_train=2, n_test=1, size=(64, 64), progress=False)
    shard_dataset(raw, root / "shards", layout="drive", progress=False)
    return root / "shards"


def _error_lines(text: str) -> list[str]:
    return [ln for ln in text.splitlines() if "error:" in ln]


def test_version():
    import unetdist

    r = cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"unetdist {unetdist.__version__}"


@pytest.mark.slow
@pytest.mark.dist
def test_only_rank_0_prints_the_error_under_accelerate_launch(shards, tmp_path):
    r = launch(["train", f"data.shared_dir={shards}", "optim.lr=-1",
                f"train.run_dir={tmp_path / 'run'}"], nproc=2)
    out = r.stdout + r.stderr
    assert _error_lines(out) == ["error: optim.lr must be > 0, got -1.0"], out
    # what the README says the launcher itself adds: its traceback and exit 1
    assert r.returncode == 1 and "ChildFailedError" in out, out


def _bash(script, tmp_path, *args, **knobs) -> subprocess.CompletedProcess:
    env = subprocess_env(PYTHON=sys.executable)
    for k in ("CONFIG", "NPROC", "SHARED_DATA", "SLURM_JOB_ID", "SLURM_JOB_NODELIST"):
        env.pop(k, None)
    env.update(knobs)
    return subprocess.run(["bash", str(REPO / script), *args], capture_output=True, text=True,
                          check=False, env=env, cwd=tmp_path, timeout=120)


@pytest.mark.slow  # the scripts start a Python interpreter to validate
@pytest.mark.parametrize("script", ["launch/train.sh", "slurm/train.sbatch"])
@pytest.mark.parametrize("override, message", [
    ("optim.lrr=1", "unknown config key"),
    ("train.precision=fp16", "train.precision must be no|bf16 without CUDA"),
])
def test_launch_scripts_validate_before_launching(shards, tmp_path, script, override, message):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump({"model": {"width": 8}}))
    r = _bash(script, tmp_path, override, f"data.shared_dir={shards}", NPROC="2",
              CONFIG="tiny.yaml", SHARED_DATA=str(shards))
    assert r.returncode == 2, r.stdout + r.stderr
    lines = _error_lines(r.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_train_sh_names_a_missing_data_folder(tmp_path):
    (tmp_path / "tiny.yaml").write_text("{}\n")
    r = _bash("launch/train.sh", tmp_path, f"data.shared_dir={tmp_path / 'nope'}", NPROC="2",
              CONFIG="tiny.yaml")
    assert r.returncode == 2 and _error_lines(r.stderr) == [
        f"error: data.shared_dir={tmp_path / 'nope'} not found"], r.stderr
