"""A binary vessel model as 2 softmax classes (`model.num_classes=2 loss.name=ce_dice`, the
multi-class losses of issue 25 on today's shards): trains with class weights, evaluates from
channel 1's softmax, and an exported file scores the same."""

from __future__ import annotations

import json

import pytest
from safetensors import safe_open

from tests.util import cli

pytestmark = pytest.mark.slow

ARGS = ["model.width=8", "model.depth=3", "data.crop=64", "data.batch_size=4",
        "data.num_workers=0", "data.steps_per_epoch=10", "train.max_steps=60",
        "train.eval_every=0", "eval.tile=0", "train.progress=false",
        "track.wandb.mode=disabled", "model.num_classes=2", "loss.name=ce_dice",
        "loss.class_weights=[1,3]"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("softmax")
    assert cli("synth", root / "raw", "--n-train", 8, "--n-test", 2, "--size", "96x96",
               "--quiet").returncode == 0
    assert cli("shard", root / "raw", root / "shards", "--layout", "drive", "--split-val",
               "0.25", "--quiet").returncode == 0
    r = cli("train", *ARGS, f"data.shared_dir={root / 'shards'}", f"train.run_dir={root / 'run'}")
    assert r.returncode == 0, r.stderr[-3000:]
    return root


def _evaluate(root, checkpoint, out) -> dict:
    r = cli("evaluate", "--checkpoint", checkpoint, "--data", root / "shards", "--split", "test",
            "--out", out, "--quiet")
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())["fov"]


def test_two_class_softmax_model_trains_evaluates_and_exports(run):
    with safe_open(str(run / "run/best/model.safetensors"), "pt") as f:
        heads = [k for k in f.keys()  # noqa: SIM118 -- a safe_open handle is not a dict
                 if k.endswith("weight") and f.get_slice(k).get_shape()[0] == 2]
    assert heads, "no 2-channel output layer in the trained model"
    fov = _evaluate(run, run / "run", run / "eval")
    # background's softmax read as vessel probability would rank vessels below background
    assert fov["auc_roc"] > 0.6 and fov["dice"] > 0.2, fov
    exported = run / "model.safetensors"
    r = cli("export", "--checkpoint", run / "run", "--format", "safetensors", "--out", exported)
    assert r.returncode == 0, r.stderr[-3000:]
    again = _evaluate(run, exported, run / "eval-exported")
    assert again["dice"] == fov["dice"] and again["auc_roc"] == fov["auc_roc"]


def test_a_binary_loss_on_two_outputs_is_refused_before_training(tmp_path):
    r = cli("train", "--check", "model.num_classes=2", f"data.shared_dir={tmp_path}")
    assert r.returncode == 2 and "model.num_classes must be 1 for loss.name=bce_dice" in r.stderr
