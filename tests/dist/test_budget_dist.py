"""A time budget under 2-process DDP: both ranks stop at the same step (rank 0's clock is
agreed on in the step collective; a disagreement would hang a collective), with the LR at
its floor, and the EMA checkpointed."""

from __future__ import annotations

import json

import pytest
import torch

from tests.util import cli, launch

pytestmark = [pytest.mark.dist, pytest.mark.slow]


def test_two_ranks_stop_together_on_the_clock(tmp_path):
    assert cli("synth", tmp_path / "raw", "--n-train", 4, "--n-test", 1, "--size", "64x64",
               "--quiet").returncode == 0
    assert cli("shard", tmp_path / "raw", tmp_path / "shards", "--layout", "drive",
               "--split-val", "0.25", "--quiet").returncode == 0
    run = tmp_path / "run"
    r = launch(["train", "model.width=8", "model.depth=2", "data.crop=48", "data.batch_size=2",
                "data.num_workers=0", "data.steps_per_epoch=4", "optim.lr=0.01",
                "optim.min_lr_ratio=0.1", "optim.schedule_by=time", "train.max_minutes=0.1",
                "train.max_steps=100000", "train.eval_every=0", "train.ema_decay=0.9",
                "train.progress=false", "eval.tile=64", "checkpoint.every_steps=0",
                "track.wandb.mode=disabled", f"data.shared_dir={tmp_path / 'shards'}",
                f"train.run_dir={run}"], nproc=2, timeout=400)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert r.stdout.count("time budget reached") == 1
    latest = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    state = json.loads((latest / "trainer_state.json").read_text())
    assert 1 < state["step"] < 100000 and state["world_size"] == 2
    assert state["budget"]["spent_s"] >= 6.0
    for name in ("random_states_0.pkl", "random_states_1.pkl", "ema.safetensors"):
        assert (latest / name).is_file(), name
    lr = torch.load(latest / "optimizer.bin", weights_only=True)["param_groups"][0]["lr"]
    assert lr == pytest.approx(0.001)
