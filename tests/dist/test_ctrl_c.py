"""Issue 18.4 under `accelerate launch`: Ctrl-C (SIGINT to the launcher, as a terminal sends it)
makes both ranks checkpoint the same step; one "stopped at step N" line for the job."""

from __future__ import annotations

import json
import signal
import subprocess

import pytest

from tests.util import accelerate_cmd, subprocess_env, wait_for

pytestmark = [pytest.mark.dist, pytest.mark.slow]


def test_ctrl_c_under_the_launcher_checkpoints_once(tmp_path):
    from unetdist.data.ingest.synth import write_synthetic
    from unetdist.data.ingest.writer import shard_dataset

    raw = write_synthetic(tmp_path / "raw", n_train=3, n_test=0, size=(64, 64), progress=False)
    shard_dataset(raw, tmp_path / "shards", layout="drive", split_val=0.0, progress=False)
    run_dir, log = tmp_path / "run", tmp_path / "log"
    cmd = accelerate_cmd(2) + [
        "-m", "unetdist", "train", f"data.shared_dir={tmp_path / 'shards'}",
        f"train.run_dir={run_dir}", "model.width=8", "model.depth=2", "data.crop=48",
        "data.batch_size=2", "data.num_workers=0", "train.max_steps=6", "train.log_every=1",
        "checkpoint.every_steps=0", "train.progress=false", "track.wandb.mode=off"]
    env = subprocess_env(UNETDIST_FAULT="stall:step=3")
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            def stalled():
                assert proc.poll() is None, log.read_text()
                m = run_dir / "metrics.jsonl"
                return m.is_file() and any(json.loads(x)["step"] == 2
                                           for x in m.read_text().splitlines())

            wait_for(stalled, timeout=240, what="step 2")
            proc.send_signal(signal.SIGINT)  # the launcher forwards it to both workers
            rc = proc.wait(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    assert text.count("stopped at step 3; checkpoint saved; run the same command to resume") \
        == 1, text
    assert "interrupted" not in text
    step3 = run_dir / "checkpoints" / "step-000003"
    assert (step3 / "random_states_0.pkl").is_file() and (step3 / "random_states_1.pkl").is_file()
    assert not (run_dir / "PREEMPTED").exists()
    assert rc != 0  # the launcher's own status (README: it exits 1 after forwarding a signal)
    (tmp_path / "launcher_tail.txt").write_text(f"rc={rc}\n" + text[-3000:])
