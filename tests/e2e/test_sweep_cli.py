"""`unetdist sweep SPEC.yaml` run locally the way the README shows it: every trial trains into
its own folder, the summary table ranks them, best.txt feeds an ensemble evaluation."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.util import cli, cli_subprocess

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
