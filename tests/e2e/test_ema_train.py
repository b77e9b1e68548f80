"""A tiny single-process run with train.ema_decay: EMA validated and checkpointed, best/ says
which weights won, and an interrupted run resumes to bitwise the same EMA weights."""

from __future__ import annotations

import json

import pytest

from tests.util import cli

pytestmark = pytest.mark.slow

ARGS = ["model.width=8", "model.depth=2", "data.channels=gray", "data.crop=48",
        "data.batch_size=2", "data.num_workers=0", "data.steps_per_epoch=3",
        "optim.schedule=constant", "optim.lr=0.01", "train.ema_decay=0.9", "train.eval_every=3",
        "train.log_every=1", "train.progress=false", "eval.tile=64", "eval.batch_size=1",
        "checkpoint.every_steps=3", "track.wandb.mode=disabled"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("ema")
    assert cli("synth", root / "raw", "--n-train", 4, "--n-test", 1, "--size", "64x64",
               "--quiet").returncode == 0
    assert cli("shard", root / "raw", root / "shards", "--layout", "drive", "--split-val",
               "0.25", "--quiet").returncode == 0
    return root


def _train(shards, run_dir, *extra):
    r = cli("train", *ARGS, f"data.shared_dir={shards / 'shards'}", f"train.run_dir={run_dir}",
            *extra)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_ema_is_validated_checkpointed_and_resumes_bitwise(shards):
    whole, split = shards / "whole", shards / "split"
    _train(shards, whole, "train.max_steps=6")
    _train(shards, split, "train.max_steps=3")
    _train(shards, split, "train.max_steps=6")  # resumes step-000003, EMA included
    final = "checkpoints/step-000006"
    for name in ("ema.safetensors", "model.safetensors"):
        assert (whole / final / name).read_bytes() == (split / final / name).read_bytes(), name
    a = (whole / "checkpoints/step-000003/ema.safetensors").read_bytes()
    assert a != (whole / final / "ema.safetensors").read_bytes()  # it moved
    records = [json.loads(x) for x in (whole / "metrics.jsonl").read_text().splitlines()]
    val = {r["step"]: r["dice"] for r in records if r.get("split") == "val"}
    ema = {r["step"]: r["dice"] for r in records if r.get("split") == "val_ema"}
    assert sorted(val) == sorted(ema) == [3, 6]
    best = json.loads((whole / "best" / "metrics.json").read_text())
    winner = max((d, s, w) for w, rec in (("raw", val), ("ema", ema)) for s, d in rec.items()
                 if d == max([*val.values(), *ema.values()]))
    assert best["dice"] == winner[0] and best["weights"] in ("raw", "ema")
    assert best["dice"] == (ema if best["weights"] == "ema" else val)[best["step"]]
