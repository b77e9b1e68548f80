"""configs/drive_cpu.yaml run the way the README says, with a small time budget: the run stops
on time (not on max_steps), its LR ends at the floor, and a resume keeps the time spent."""

from __future__ import annotations

import json

import pytest
import torch

from tests.util import REPO, cli

pytestmark = [pytest.mark.slow, pytest.mark.exclusive]  # steps made within a wall-clock budget

SMALL = ["model.width=8", "model.depth=2", "data.crop=48", "data.batch_size=2",
         "data.num_workers=0", "data.steps_per_epoch=5", "optim.warmup_steps=2",
         "train.eval_every=0", "train.log_every=1", "train.progress=false", "eval.tile=64",
         "eval.batch_size=1", "checkpoint.every_steps=0", "track.wandb.mode=disabled"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("budget")
    assert cli("synth", root / "raw", "--n-train", 4, "--n-test", 1, "--size", "64x64",
               "--quiet").returncode == 0
    assert cli("shard", root / "raw", root / "shards", "--layout", "drive", "--split-val",
               "0.25", "--quiet").returncode == 0
    return root


def _final(run_dir):
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    ck = run_dir / "checkpoints" / latest
    state = json.loads((ck / "trainer_state.json").read_text())
    opt = torch.load(ck / "optimizer.bin", weights_only=True)
    return state, opt["param_groups"][0]["lr"]


def test_drive_cpu_stops_on_time_with_the_lr_at_its_floor_and_resume_keeps_the_budget(shards):
    from unetdist.config import load_config

    recipe = load_config(REPO / "configs" / "drive_cpu.yaml")
    floor = recipe.optim.lr * recipe.optim.min_lr_ratio
    run_dir = shards / "run"
    args = ["train", "--config", REPO / "configs" / "drive_cpu.yaml", *SMALL,
            f"data.shared_dir={shards / 'shards'}", f"train.run_dir={run_dir}"]
    r = cli(*args, "train.max_minutes=0.1")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "time budget reached: train.max_minutes=0.1" in r.stdout
    state, lr = _final(run_dir)
    assert 5 < state["step"] < recipe.train.max_steps  # the clock ended it
    assert 6.0 <= state["budget"]["spent_s"] < 30.0
    assert lr == pytest.approx(floor)
    lrs = [json.loads(x)["lr"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()
           if '"train"' in x]
    assert lrs[2] > lrs[-1] > floor and lrs[2:] == sorted(lrs[2:], reverse=True)
    assert (run_dir / "best" / "model.safetensors").is_file()
    # a larger budget resumes from the time already spent, not from zero
    r2 = cli(*args, "train.max_minutes=0.15")
    assert r2.returncode == 0, r2.stderr[-3000:]
    state2, lr2 = _final(run_dir)
    assert state2["step"] > state["step"] and state2["budget"]["spent_s"] >= 9.0
    assert state2["budget"]["spent_s"] - state["budget"]["spent_s"] < 9.0  # not 9 s more
    assert lr2 == pytest.approx(floor)
