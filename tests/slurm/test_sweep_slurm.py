"""A 2-fold x 2-learning-rate offline sweep on the real 2-node Slurm test cluster, the way the
README runs it: `unetdist sweep SPEC --launch slurm` submits slurm/kfold.sbatch as a 4-task
array (each task a train.sbatch job), `unetdist sweep DIR --summary` tabulates the trials and
picks the best per fold, and the ensemble of those evaluates on 2 processes scoring every test
image exactly once."""

from __future__ import annotations

import csv
import json

import pytest
import yaml

from tests.util import REPO, cli, launch

# one worker: the session's cluster listens on fixed ports (tests/slurm/cluster.py)
pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.xdist_group("slurm")]

TINY = {"seed": 0,
        "data": {"crop": 48, "batch_size": 2, "num_workers": 0, "steps_per_epoch": 3,
                 "aug": {"rotate_deg": 0.0, "scale": 0.0}},
        "model": {"width": 8, "depth": 2},
        "optim": {"schedule": "constant"},
        "train": {"max_steps": 4, "eval_every": 2, "log_every": 2, "progress": False},
        "eval": {"tile": 64, "num_overlays": 0, "auc_bins": 100},
        "checkpoint": {"every_steps": 2, "keep_last": 2},
        "track": {"wandb": {"mode": "disabled"}}}
FOLD_KEY = "data.fold"


@pytest.fixture(scope="module")
def sweep_setup(tmp_path_factory) -> dict:
    from unetdist.data.ingest.synth import write_synthetic
    from unetdist.data.ingest.writer import shard_dataset

    root = tmp_path_factory.mktemp("slurmsweep")
    raw = write_synthetic(root / "raw", n_train=4, n_test=3, size=(64, 64), progress=False)
    shards = root / "shared" / "shards"
    shard_dataset(raw, shards, layout="drive", folds=2, progress=False)
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    spec = {"config": str(root / "tiny.yaml"), "out": str(root / "sweep"),
            "parameters": {FOLD_KEY: [0, 1], "optim.lr": [1.0e-3, 3.0e-3]},
            "group_by": FOLD_KEY, "metric": "dice"}
    (root / "kfold.yaml").write_text(yaml.safe_dump(spec))
    return {"root": root, "shards": shards, "spec": root / "kfold.yaml"}


def test_two_fold_two_lr_sweep_on_slurm_then_the_best_per_fold_ensemble(slurm_cluster,
                                                                        sweep_setup):
    root, shards = sweep_setup["root"], sweep_setup["shards"]
    env = slurm_cluster.job_env(SHARED_DATA=str(shards), LOCAL_DATA=str(root / "local" / "%n"),
                                EVAL_SPLIT="none")
    r = cli("sweep", sweep_setup["spec"], "--launch", "slurm",
            "--script", REPO / "slurm" / "kfold.sbatch", "--sbatch-arg=--nodes=1",
            f"--sbatch-arg=--output={root}/task-%a.out", env=env, cwd=root)
    assert r.returncode == 0, r.stdout + r.stderr
    job = r.stdout.split("submitted array job ")[1].split()[0]
    for task in range(4):
        info = slurm_cluster.wait_job(f"{job}_{task}", timeout=600)
        log = (root / f"task-{task}.out").read_text(errors="replace")
        assert info["JobState"] == "COMPLETED", log
        assert "array task" in log
    r = cli("sweep", root / "sweep", "--summary", env=env, cwd=root)
    assert r.returncode == 0, r.stderr
    rows = list(csv.DictReader((root / "sweep" / "summary.csv").open()))
    assert len(rows) == 4 and all(row["status"] == "done" for row in rows)
    assert {(row[FOLD_KEY], row["optim.lr"]) for row in rows} == \
        {(f, lr) for f in ("0", "1") for lr in ("0.001", "0.003")}
    for row in rows:  # each trial trained its own fold and lr to the end
        cfg = yaml.safe_load((root / "sweep" / row["trial"] / "config.yaml").read_text())
        assert cfg["data"]["fold"] == int(row[FOLD_KEY])
        assert cfg["optim"]["lr"] == float(row["optim.lr"])
        assert int(row["step"]) in (2, 4)
    best = (root / "sweep" / "best.txt").read_text().split()
    by_fold = {row[FOLD_KEY]: row for row in rows}
    assert len(best) == 2 and "best per data.fold" in r.stdout
    for fold, path in zip(("0", "1"), best):
        scored = [row for row in rows if row[FOLD_KEY] == fold]
        winner = max(scored, key=lambda row: float(row["dice"]))
        assert path == winner["best"], (fold, by_fold)
    out = root / "sweep" / "ensemble-test"
    r = launch(["evaluate", "--checkpoint", *best, "--data", shards, "--split", "test",
                "--out", out, "--no-progress"], nproc=2)
    assert r.returncode == 0, r.stdout + r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["info"]["ensemble"] == 2 and m["info"]["world_size"] == 2
    assert m["num_images"] == 3
    keys = [row["key"] for row in csv.DictReader((out / "per_image.csv").open())]
    assert len(keys) == len(set(keys)) == 3
    r = cli("sweep", root / "sweep", "--summary", env=env, cwd=root)  # now with the ensemble
    assert r.returncode == 0, r.stderr
    assert f"ensemble-test: 2 model(s) on test (3 images): FOV dice {m['fov']['dice']:.4f}" \
        in r.stdout
