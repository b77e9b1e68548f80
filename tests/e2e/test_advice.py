"""Issue 18.4 and 18.7: Ctrl-C saves a checkpoint; advice that leads somewhere (evaluate any
checkpoint of a run, report on a non-run folder, data.local_dir alone, the resume refusal)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.util import cli, subprocess_env, wait_for

TINY = ["model.width=8", "model.depth=2", "data.crop=48", "data.batch_size=2",
        "data.num_workers=0", "data.steps_per_epoch=4", "train.max_steps=4",
        "train.eval_every=2", "train.progress=false", "checkpoint.every_steps=2",
        "eval.tile=64", "eval.num_overlays=0", "eval.auc_bins=100", "track.wandb.mode=off"]


@pytest.fixture(scope="module")
def run(tiny_shards, tmp_path_factory) -> dict:
    """A 4-step run with checkpoints at steps 2 and 4 (trains: only for slow tests)."""
    root = tmp_path_factory.mktemp("advice")
    run_dir = root / "run"
    r = cli("train", f"data.shared_dir={tiny_shards}", f"train.run_dir={run_dir}", *TINY)
    assert r.returncode == 0, r.stdout + r.stderr
    return {"root": root, "shards": tiny_shards, "run_dir": run_dir}


def _evaluate(run: dict, checkpoint, out: Path) -> dict:
    r = cli("evaluate", "--checkpoint", checkpoint, "--data", run["shards"], "--split", "test",
            "--quiet", "--out", out)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads((out / "metrics.json").read_text())


@pytest.mark.slow
def test_checkpoint_forms_resolve_to_best_or_a_step(run):
    from unetdist.eval.inference import read_checkpoint, resolve_checkpoint

    rd = run["run_dir"]
    ckpts = rd / "checkpoints"
    assert resolve_checkpoint(rd) == rd / "best"
    assert resolve_checkpoint(ckpts / "latest") == ckpts / "step-000004"
    assert resolve_checkpoint(ckpts) == ckpts / "step-000004"
    assert resolve_checkpoint(ckpts / "step-000002") == ckpts / "step-000002"
    state, meta, cfg = read_checkpoint(ckpts / "step-000002")  # accelerate's state + run config
    assert meta["step"] == "2" and cfg.model.width == 8 and any(k.endswith("weight")
                                                                 for k in state)


@pytest.mark.slow
def test_evaluate_accepts_a_run_folder_and_latest(run, tmp_path):
    rd = run["run_dir"]
    best = json.loads((rd / "best" / "metrics.json").read_text())
    via_run = _evaluate(run, rd, tmp_path / "run")  # -> best/
    assert via_run["num_images"] == 2 and via_run["fov"]["dice"] >= 0
    # the default output of a step folder lands in the run, where `report` finds it
    r = cli("evaluate", "--checkpoint", rd / "checkpoints" / "latest", "--data", run["shards"],
            "--split", "test", "--quiet")
    assert r.returncode == 0, r.stderr
    latest = json.loads((rd / "eval-shards-test-step-000004" / "metrics.json").read_text())
    if best["step"] == 4:  # the same weights through both paths
        assert latest["fov"] == via_run["fov"]


def test_report_on_a_folder_that_is_not_a_run_is_exit_2(tmp_path):
    r = cli("report", tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "not a run directory" in r.stderr
    assert not (tmp_path / "report.html").exists()


def test_local_dir_alone_with_stage_false_is_valid(tiny_shards, tmp_path):
    args = ["train", "--check", f"data.local_dir={tiny_shards}", "data.stage=false",
            f"train.run_dir={tmp_path / 'other'}"]
    r = cli(*args)
    assert r.returncode == 0 and f"data {tiny_shards}" in r.stdout, r.stderr
    r = cli("train", "--check", f"data.local_dir={tiny_shards}")  # stage=true needs a source
    assert r.returncode == 2 and "data.shared_dir must be set" in r.stderr


@pytest.mark.slow
def test_architecture_refusal_does_not_point_at_resume_none(run):
    r = cli("train", f"data.shared_dir={run['shards']}", f"train.run_dir={run['run_dir']}",
            *TINY, "model.width=16")
    assert r.returncode == 2 and "different architecture" in r.stderr
    assert "train.resume=none" not in r.stderr and "new train.run_dir" in r.stderr


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint_and_says_how_to_resume(run, tmp_path):
    rd = tmp_path / "run"
    args = ["train", f"data.shared_dir={run['shards']}", f"train.run_dir={rd}", *TINY,
            "checkpoint.every_steps=0", "train.eval_every=0", "train.log_every=1"]
    env = subprocess_env(UNETDIST_FAULT="stall:step=3")
    log = tmp_path / "log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "unetdist", *args], stdout=out,
                                stderr=subprocess.STDOUT, env=env, text=True)
        try:
            wait_for(lambda: _stalled(rd) or proc.poll() is not None, timeout=120,
                     what="step 2 logged")
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    text = log.read_text()
    assert rc == 130, text
    assert "stopped at step 3; checkpoint saved; run the same command to resume" in text
    assert "Traceback" not in text and "interrupted" not in text
    assert (rd / "checkpoints" / "step-000003" / "trainer_state.json").is_file()
    assert not (rd / "PREEMPTED").exists()  # a user's stop is not a requeue request
    r = cli(*args)  # the same command resumes and finishes
    assert r.returncode == 0 and "resuming from" in r.stdout + r.stderr, r.stdout + r.stderr


def _stalled(run_dir: Path) -> bool:
    m = run_dir / "metrics.jsonl"
    return m.is_file() and any(json.loads(x)["step"] == 2 for x in m.read_text().splitlines())


def test_second_ctrl_c_aborts_at_once():
    """Ctrl-C works as before afterwards: the handler the process had comes back. Python's own
    is set first, since a pytest-xdist worker starts with SIGINT ignored."""
    from unetdist.train.preempt import PreemptionFlag

    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with PreemptionFlag() as flag:
            signal.raise_signal(signal.SIGINT)
            assert flag.interrupted and flag.requested
            with pytest.raises(KeyboardInterrupt):
                signal.raise_signal(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, outer)


def test_a_step_folder_with_a_broken_state_is_one_error(tmp_path):
    from unetdist.errors import UserError
    from unetdist.eval.inference import read_checkpoint
    from unetdist.models.weights import save_weights

    step = tmp_path / "checkpoints" / "step-000002"
    step.mkdir(parents=True)
    import torch

    save_weights({"w": torch.zeros(1)}, step / "model.safetensors", {})
    (step / "trainer_state.json").write_text("{broken")
    with pytest.raises(UserError, match="trainer_state.json is unreadable"):
        read_checkpoint(step)
