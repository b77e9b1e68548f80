"""Checkpoint folder, `latest` pointer, pruning, resume rules, best export, metrics truncation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from unetdist import runfolder as rf
from unetdist.config import RunConfig, config_from_dict, to_dict, to_yaml
from unetdist.errors import UserError
from unetdist.track.jsonl import open_tracker, read_records
from unetdist.train import checkpoint as ck
from unetdist.train import resume


def _fake_ckpt(run_dir: Path, step: int, complete: bool = True) -> Path:
    p = rf.checkpoints_dir(run_dir) / rf.step_name(step)
    p.mkdir(parents=True)
    (p / "random_states_0.pkl").write_bytes(b"x")
    if complete:
        (p / rf.STATE_FILE).write_text(json.dumps({"step": step}))
    return p


def test_latest_pointer_is_atomic_and_incomplete_folders_are_ignored(tmp_path):
    for s in (2, 4):
        _fake_ckpt(tmp_path, s)
        rf.write_latest(tmp_path, rf.step_name(s))
    _fake_ckpt(tmp_path, 6, complete=False)  # killed before trainer_state.json
    assert rf.read_latest(tmp_path).name == "step-000004"
    assert (rf.checkpoints_dir(tmp_path) / "latest").read_text() == "step-000004\n"
    assert not list(rf.checkpoints_dir(tmp_path).glob(".tmp-*"))
    # killed between the rename and the pointer update: the newer complete folder wins
    _fake_ckpt(tmp_path, 8)
    assert rf.read_latest(tmp_path).name == "step-000008"


def test_prune_keeps_the_newest_and_never_latest(tmp_path):
    for s in (1, 2, 3, 4, 5):
        _fake_ckpt(tmp_path, s)
    rf.write_latest(tmp_path, "step-000005")
    removed = ck.prune(tmp_path, keep_last=2)
    assert sorted(p.name for p in removed) == ["step-000001", "step-000002", "step-000003"]
    assert [p.name for _, p in rf.list_checkpoints(tmp_path)] == ["step-000004", "step-000005"]


def test_clean_stale_removes_temporaries_and_restores_best(tmp_path):
    _fake_ckpt(tmp_path, 2)
    (rf.checkpoints_dir(tmp_path) / ".tmp-step-000004").mkdir()
    (tmp_path / ".tmp-old-best").mkdir()
    (tmp_path / ".tmp-old-best" / "model.safetensors").write_bytes(b"w")
    ck.clean_stale(tmp_path)
    assert not list(tmp_path.rglob(".tmp-*"))
    assert (tmp_path / "best" / "model.safetensors").read_bytes() == b"w"
    assert rf.read_latest(tmp_path).name == "step-000002"


def test_find_resume_rules(tmp_path):
    assert rf.find_resume("auto", tmp_path) is None
    assert rf.find_resume("none", tmp_path) is None
    _fake_ckpt(tmp_path, 3)
    old = _fake_ckpt(tmp_path, 1)
    rf.write_latest(tmp_path, "step-000003")
    assert rf.find_resume("auto", tmp_path).name == "step-000003"
    with pytest.raises(UserError, match="train.resume=none.*already holds checkpoints"):
        rf.find_resume("none", tmp_path)
    with pytest.raises(UserError, match="older than checkpoints"):
        rf.find_resume(str(old), tmp_path)
    with pytest.raises(UserError, match="not a checkpoint folder"):
        rf.find_resume(str(tmp_path / "nowhere"), tmp_path)
    other = tmp_path / "other-run"
    assert rf.find_resume(str(tmp_path), other).name == "step-000003"  # a run dir: its latest


def test_compatibility_refuses_architecture_and_dataset_warns_world_size():
    cfg = RunConfig()
    saved = {"config": to_dict(cfg), "manifest_hash": "abc", "world_size": 2}
    assert resume.check_compatible(saved, cfg.model.architecture(), "abc", 2, "p") == []
    cfg.model.channels_last = True  # runtime switch: allowed
    assert resume.check_compatible(saved, cfg.model.architecture(), "abc", 2, "p") == []
    cfg.model.width = 32
    with pytest.raises(UserError, match="model.width: 64 -> 32"):
        resume.check_compatible(saved, cfg.model.architecture(), "abc", 2, "p")
    with pytest.raises(UserError, match="different dataset"):
        resume.check_compatible(saved, RunConfig().model.architecture(), "xyz", 2, "p")
    warn = resume.check_compatible(saved, RunConfig().model.architecture(), "abc", 4, "p")
    assert len(warn) == 1 and "2 processes with 4" in warn[0]


def test_export_best_is_self_describing_and_replaces_atomically(tmp_path):
    from unetdist.models.weights import load_weights

    cfg = RunConfig()
    sd = {"w": torch.arange(6.0).reshape(2, 3)}
    ck.export_best(sd, to_dict(cfg), to_yaml(cfg), {"dice": 0.5}, 10, tmp_path)
    ck.export_best({"w": sd["w"] + 1}, to_dict(cfg), to_yaml(cfg), {"dice": 0.6}, 20, tmp_path)
    best = tmp_path / "best"
    weights, meta = load_weights(best / "model.safetensors")
    assert torch.equal(weights["w"], sd["w"] + 1)
    assert meta["format"] == "unetdist-1" and meta["step"] == "20"
    assert config_from_dict(json.loads(meta["config"])) == cfg
    assert json.loads((best / "metrics.json").read_text()) == {"step": 20, "dice": 0.6}
    assert (best / "config.yaml").read_text() == to_yaml(cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_metrics_records_past_the_resumed_step_are_dropped(tmp_path):
    cfg = RunConfig()
    cfg.track.wandb.mode = "disabled"
    t = open_tracker(cfg, tmp_path, is_main=True)
    for s in (1, 2, 3, 4):
        t.log({"split": "train", "loss": float(s)}, s)
    t.finish()
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 5, "spl')  # torn line from a kill
    t = open_tracker(cfg, tmp_path, is_main=True, run_id=t.run_id, resume_step=2)
    t.log({"split": "train", "loss": 3.5}, 3)
    t.finish()
    recs = read_records(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["loss"]) for r in recs] == [(1, 1.0), (2, 2.0), (3, 3.5)]


@pytest.fixture
def accelerator():
    from accelerate import Accelerator

    from unetdist.distributed import forget_accelerator_state

    forget_accelerator_state()
    yield Accelerator(cpu=True)
    forget_accelerator_state()


class JsonDoc:
    """A minimal JSON part: a dict at the top level of `file`."""

    name = ""

    def __init__(self, file: str, state: dict) -> None:
        self.file, self.state = file, state

    def state_dict(self) -> dict:
        return dict(self.state)

    def load_state_dict(self, state: dict) -> None:
        self.state = state


def _parts(step: int) -> list:
    return [JsonDoc(rf.STATE_FILE, {"step": step}),
            JsonDoc(rf.SCHEDULER_FILE, {"last_epoch": step})]


def _model_and_opt(acc):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return acc.prepare(model, opt)


def test_save_load_prune_and_crash_mid_save(tmp_path, accelerator, monkeypatch):
    model, _ = _model_and_opt(accelerator)
    for step in (2, 4, 6):
        with torch.no_grad():
            model.weight.add_(1.0)
        path = ck.save_checkpoint(accelerator, tmp_path, step, _parts(step), keep_last=2)
    assert path.name == "step-000006" and rf.read_latest(tmp_path) == path
    assert [p.name for _, p in rf.list_checkpoints(tmp_path)] == ["step-000004", "step-000006"]
    assert (path / "random_states_0.pkl").is_file() and (path / "model.safetensors").is_file()
    assert ck.read_trainer_state(path) == {"step": 6}
    assert ck.read_json(path, rf.SCHEDULER_FILE) == {"last_epoch": 6}

    monkeypatch.setenv("UNETDIST_FAULT", "save_crash:step=8")
    with pytest.raises(RuntimeError, match="injected fault"):
        ck.save_checkpoint(accelerator, tmp_path, 8, _parts(8), keep_last=2)
    assert rf.read_latest(tmp_path).name == "step-000006"
    assert not list(tmp_path.rglob(".tmp-*"))

    saved = model.weight.detach().clone()
    torch.manual_seed(123)
    with torch.no_grad():
        model.weight.zero_()
    accelerator.load_state(str(path))
    assert torch.equal(model.weight, saved)
    assert ck.verify_rng_restored(path, 0)
    torch.rand(3)  # consuming randomness changes the state: the check notices
    assert not ck.verify_rng_restored(path, 0)


def test_every_part_round_trips_and_a_missing_file_part_is_a_warning(tmp_path, accelerator,
                                                                     capsys):
    from unetdist.train.budget import TimeBudget
    from unetdist.train.ema import ModelEma
    from unetdist.train.optim import SchedulerState

    model, opt = _model_and_opt(accelerator)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    for _ in range(3):
        opt.step()
        sched.step()
    state = ck.TrainState(step=3, batches=7, best_dice=0.5, best_step=2, run_id="r",
                          steps_per_epoch=4)
    budget = TimeBudget(10.0, 100, True)
    budget.load_state_dict({"spent_s": 42.0})
    identity = ck.RunIdentity("hash", 1, {"model": {"width": 8}})
    ema = ModelEma(accelerator.unwrap_model(model), 0.9)
    ema.update(accelerator.unwrap_model(model))
    path = ck.save_checkpoint(accelerator, tmp_path, 3,
                              [state, identity, budget, SchedulerState(sched), ema], keep_last=2)
    doc = ck.read_trainer_state(path)  # the layout every earlier version wrote and reads
    assert doc["stream"] == {"epoch": 1, "position": 3, "batches": 7}
    assert doc["budget"]["spent_s"] == 42.0 and doc["manifest_hash"] == "hash"
    assert ck.read_json(path, rf.SCHEDULER_FILE)["last_epoch"] == 3

    state2, budget2 = ck.TrainState(), TimeBudget(10.0, 100, True)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    ema2 = ModelEma(accelerator.unwrap_model(model), 0.9)
    parts = [state2, identity, budget2, SchedulerState(sched2), ema2]
    ck.load_checkpoint(accelerator, path, parts)
    assert (state2.step, state2.batches, state2.best_dice, state2.run_id) == (3, 7, 0.5, "r")
    assert budget2.spent_s == 42.0 and sched2.last_epoch == 3 and ema2.updates == 1
    (path / "ema.safetensors").unlink()
    ck.load_checkpoint(accelerator, path, parts)
    err = capsys.readouterr().err
    assert "holds no EMA weights; the EMA starts from the resumed weights" in err


def test_preemption_flag_only_records_signals_and_the_marker_names_the_step(tmp_path,
                                                                           monkeypatch):
    import os
    import signal

    from unetdist.train import preempt
    from unetdist.train.preempt import PreemptionFlag

    before = {s: signal.getsignal(s) for s in (signal.SIGUSR1, signal.SIGTERM)}
    monkeypatch.setattr(preempt, "_EXITS_AFTER_TRAINING", False)
    try:
        for exits in (False, True):
            if exits:
                preempt.process_exits_after_training()  # what `unetdist train` says
            with PreemptionFlag() as flag:
                assert not flag.requested
                os.kill(os.getpid(), signal.SIGUSR1)
                os.kill(os.getpid(), signal.SIGTERM)  # a second signal (while saving): no exit
                assert flag.received == ["SIGUSR1", "SIGTERM"]
            # the command's process is on its way out: late signals stay harmless; a Python
            # caller of fit() gets its own handlers back
            after = {s: signal.getsignal(s) for s in before}
            assert after == ({s: signal.SIG_IGN for s in before} if exits else before)
            assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN
    finally:
        for s, h in before.items():
            signal.signal(s, h)
    with PreemptionFlag():
        pass  # no signal: the previous handlers come back
    assert {s: signal.getsignal(s) for s in before} == before
    ck.write_preempted(tmp_path, 12)
    assert (tmp_path / "PREEMPTED").read_text() == "12\n"
    ck.clear_preempted(tmp_path)
    ck.clear_preempted(tmp_path)  # idempotent
    assert not (tmp_path / "PREEMPTED").exists()
