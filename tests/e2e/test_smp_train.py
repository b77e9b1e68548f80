"""`unetdist train model.name=smp ...` as the README shows it: a tu- encoder trains a few steps,
checkpoints, and its best/ evaluates."""

from __future__ import annotations

import json

import pytest

from tests.util import cli, require

pytestmark = pytest.mark.slow


def test_smp_model_trains_checkpoints_and_evaluates(tmp_path):
    try:
        import segmentation_models_pytorch  # noqa: F401
        have = True
    except ImportError:
        have = False
    require(have, "segmentation_models_pytorch (optional extra `smp`) is not installed")
    assert cli("synth", tmp_path / "raw", "--n-train", 3, "--n-test", 1, "--size", "64x64",
               "--quiet").returncode == 0
    assert cli("shard", tmp_path / "raw", tmp_path / "shards", "--layout", "drive",
               "--split-val", "0.34", "--quiet").returncode == 0
    run = tmp_path / "run"
    r = cli("train", "model.name=smp", "model.arch=FPN", "model.encoder=tu-resnet18",
            "data.channels=rgb", "data.crop=48", "data.batch_size=2", "data.num_workers=0",
            "train.max_steps=3", "train.eval_every=3", "train.log_every=1",
            "train.progress=false", "eval.tile=64", "eval.batch_size=1",
            "track.wandb.mode=disabled", f"data.shared_dir={tmp_path / 'shards'}",
            f"train.run_dir={run}")
    assert r.returncode == 0, r.stderr[-3000:]
    losses = [json.loads(x)["loss"] for x in (run / "metrics.jsonl").read_text().splitlines()
              if '"train"' in x]
    assert len(losses) == 3 and all(0 < v < float("inf") for v in losses)
    assert (run / "checkpoints" / "step-000003" / "model.safetensors").is_file()
    r = cli("evaluate", "--checkpoint", run / "best", "--data", tmp_path / "shards",
            "--split", "test", "--no-progress")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((run / "eval-shards-test" / "metrics.json").read_text())["num_images"] == 1
