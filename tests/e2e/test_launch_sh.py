"""launch/train.sh on this CPU-only box: NPROC=2 runs two processes over gloo to completion."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from tests.util import REPO, subprocess_env

pytestmark = [pytest.mark.slow, pytest.mark.dist]

TRAIN_SH = REPO / "launch" / "train.sh"
TINY = {
    "seed": 0,
    "data": {"crop": 48, "batch_size": 2, "num_workers": 0, "steps_per_epoch": 4},
    "model": {"width": 8, "depth": 2},
    "train": {"max_steps": 4, "eval_every": 0, "progress": False},
    "eval": {"tile": 64, "num_overlays": 0, "auc_bins": 100},
    "checkpoint": {"every_steps": 2},
    "track": {"wandb": {"mode": "disabled"}},
}


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from unetdist.data.ingest.synth import write_synthetic
    from unetdist.data.ingest.writer import shard_dataset

    root = tmp_path_factory.mktemp("launch_sh")
    raw = write_synthetic(root / "raw", n_train=3, n_test=1, size=(64, 64), progress=False)
    shard_dataset(raw, root / "shards", layout="drive", progress=False)
    return root / "shards"


def _run(tmp_path, *args: str, **knobs: str) -> subprocess.CompletedProcess:
    env = subprocess_env(PYTHON=sys.executable)
    for k in ("CONFIG", "NPROC", "MAIN_PORT"):  # only the knobs this test sets
        env.pop(k, None)
    env.update(knobs)
    return subprocess.run(["bash", str(TRAIN_SH), *args], check=False, capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=300)


def test_nproc2_trains_over_gloo_on_cpu(shards, tmp_path):
    from unetdist.train.checkpoint import read_latest, read_trainer_state

    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    run = tmp_path / "run"
    r = _run(tmp_path, f"data.shared_dir={shards}", f"train.run_dir={run}",
             NPROC="2", CONFIG="tiny.yaml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 process(es) on CPU (gloo)" in r.stderr
    latest = read_latest(run)
    assert latest is not None and latest.name == "step-000004", r.stderr
    assert read_trainer_state(latest)["world_size"] == 2
    assert sorted(p.name for p in latest.glob("random_states_*.pkl")) == \
        ["random_states_0.pkl", "random_states_1.pkl"]
    meta = json.loads((run / "best" / "metrics.json").read_text())
    assert meta["step"] == 4


@pytest.mark.parametrize("env, message", [
    ({}, "set CONFIG"),
    ({"CONFIG": "missing.yaml"}, "CONFIG=missing.yaml not found"),
    ({"CONFIG": "tiny.yaml", "NPROC": "0"}, "NPROC must be a positive integer"),
])
def test_bad_knobs_fail_with_one_clear_line(tmp_path, env, message):
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    r = _run(tmp_path, **env)
    assert r.returncode == 2 and message in r.stderr, r.stderr
