"""Issue 23.1 under `accelerate launch`: one rank's loader worker stalls; that rank says which
worker, both ranks discard the step it could not make, save the previous one, and stop (exit 3)."""

from __future__ import annotations

import re
import time

import pytest

from tests.util import launch, subprocess_env, synthetic_shards

# exclusive: a batch later than data.stall_seconds=3 on a busy box would be a false stall
pytestmark = [pytest.mark.dist, pytest.mark.slow, pytest.mark.exclusive]


def test_a_stalled_worker_on_one_rank_stops_both_with_the_previous_checkpoint(tmp_path):
    shards = synthetic_shards(tmp_path / "data", n_train=4, seed=6)
    run_dir = tmp_path / "run"
    args = [f"data.shared_dir={shards}", f"train.run_dir={run_dir}", "model.width=8",
            "model.depth=2", "data.crop=48", "data.batch_size=2", "data.num_workers=2",
            "data.stall_seconds=3", "train.max_steps=6", "train.log_every=1",
            "checkpoint.every_steps=0", "train.progress=false", "track.wandb.mode=disabled"]
    t0 = time.monotonic()
    r = launch(["train", *args], env=subprocess_env(UNETDIST_FAULT="worker_stall:batch=2:rank=1"),
               timeout=300)
    took = time.monotonic() - t0
    out = r.stdout + r.stderr
    assert r.returncode != 0, out[-3000:]
    said = re.findall(r"rank 1: no batch for 3 s from loader worker pid \d+ "
                      r"\(data\.num_workers=2\); stack: py-spy dump --pid \d+; try "
                      r"data\.num_workers=0", out)
    assert len(said) == 1, out[-3000:]
    errors = [x for x in out.splitlines() if x.startswith("error:")]
    expected = ("error: a data loader stalled (its rank said which); checkpoint of step 2 "
                "saved; run the same command to resume")
    assert errors == [expected], out[-3000:]
    step2 = run_dir / "checkpoints" / "step-000002"
    assert (step2 / "random_states_0.pkl").is_file() and (step2 / "random_states_1.pkl").is_file()
    assert not (run_dir / "checkpoints" / "step-000003").exists()
    assert took < 240  # no rank was left waiting in a collective
