"""Training on multi-class (A/V) shards under real 2-process DDP over gloo (issue 25 item 3):
a softmax model over the shards' 4 classes with ce_dice and the ignore value 255 trains, both
ranks write their checkpoint state, and a run killed (kill -9 of the whole process group) at a
known step resumes to the same weights, byte for byte, as the run that was never interrupted.

Validation during training needs the multi-class evaluation (train.eval_every=0 here, and the
shards have no val split, so the final weights are exported as best/).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors import safe_open

from tests.av_shards import av_shards
from tests.dist.test_trainer import _env, _kill_everything, _latest, _ok, _start, _wait_latest
from tests.util import launch

pytestmark = [pytest.mark.dist, pytest.mark.slow]

MAX_STEPS = 4


def _args(shards: Path, run_dir: Path) -> list[str]:
    return ["train", f"data.shared_dir={shards}", f"train.run_dir={run_dir}",
            "model.num_classes=4", "loss.name=ce_dice", "loss.ignore_index=255",
            "train.eval_every=0", "data.crop_class_bias=0.5", "model.width=8", "model.depth=2",
            "data.channels=gray", "data.crop=32", "data.batch_size=2", "data.num_workers=0",
            "data.steps_per_epoch=3", f"train.max_steps={MAX_STEPS}", "train.log_every=1",
            "checkpoint.every_steps=2", "optim.lr=0.02", "train.progress=false",
            "track.wandb.mode=disabled", "eval.tile=64"]


def _weights(run_dir: Path) -> bytes:
    return (run_dir / "checkpoints" / f"step-{MAX_STEPS:06d}" / "model.safetensors").read_bytes()


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    return av_shards(tmp_path_factory.mktemp("av"), n_train=4, n_val=0, n_test=0, size=(64, 64))


def test_av_shards_train_on_two_ranks_and_a_killed_run_resumes_bitwise(shards, tmp_path):
    from unetdist.track.jsonl import read_records

    ref = tmp_path / "reference"
    _ok(launch(_args(shards, ref), env=_env()))
    step = ref / "checkpoints" / f"step-{MAX_STEPS:06d}"
    assert _latest(ref) == step.name
    assert all((step / f"random_states_{r}.pkl").is_file() for r in (0, 1))
    train = [r for r in read_records(ref / "metrics.jsonl") if r["split"] == "train"]
    assert [r["step"] for r in train] == list(range(1, MAX_STEPS + 1))
    assert all(0 < r["loss"] < 10 for r in train), train
    with safe_open(str(ref / "best" / "model.safetensors"), "pt") as f:  # K=4 output channels
        heads = [k for k in f.keys()  # noqa: SIM118 -- a safe_open handle is not a dict
                 if k.endswith("weight") and f.get_slice(k).get_shape()[0] == 4]
    assert heads, "no 4-channel output layer"

    run_dir, log = tmp_path / "killed", tmp_path / "killed.log"
    proc = _start(_args(shards, run_dir), _env(UNETDIST_FAULT="stall:step=3"), log)
    try:
        _wait_latest(proc, run_dir, "step-000002", log)
    finally:
        _kill_everything(proc)  # the launcher and both workers, as a node failure
    _ok(launch(_args(shards, run_dir), env=_env()))
    assert _weights(run_dir) == _weights(ref)
