"""Topology metrics under `accelerate launch` with 2 processes: each image counted once, equal to
the 1-process evaluation and to a direct computation over every image's predicted mask."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from tests.eval_helpers import make_best_dir, tiny_config
from tests.util import launch, subprocess_env

pytestmark = [pytest.mark.dist, pytest.mark.slow]


def _direct(shards, pred_dir) -> dict:
    """clDice and Betti errors straight from the written masks and the shards' labels/FOVs."""
    from PIL import Image

    from unetdist.data.pipeline import eval_samples
    from unetdist.eval.topology import sum_counts, topology_counts, topology_metrics

    cfg = tiny_config()
    counts, per_image = [], {}
    for s in eval_samples(cfg.data, str(shards), "test", rank=0, world_size=1):
        with Image.open(pred_dir / f"{s['key']}.png") as im:
            pred = np.asarray(im) > 0
        c = topology_counts(pred, s["label"][0, 0].numpy() > 0.5, s["fov"][0, 0].numpy() > 0.5)
        counts.append(c)
        per_image[s["key"]] = c
    return {"total": topology_metrics(sum_counts(counts)), "per_image": per_image}


def test_two_processes_count_each_image_once(tmp_path):
    from unetdist.data.ingest.synth import write_synthetic
    from unetdist.data.ingest.writer import shard_dataset

    raw = write_synthetic(tmp_path / "raw", n_train=1, n_test=3, size=(64, 72), seed=1,
                          progress=False)
    shards = tmp_path / "shards"
    shard_dataset(raw, shards, layout="drive", split_val=0.0)
    best = make_best_dir(tmp_path / "run" / "best", tiny_config(), seed=4)
    docs = {}
    for n in (1, 2):
        out = tmp_path / f"ev{n}"
        args = ["evaluate", "--checkpoint", best, "--data", shards, "--split", "test",
                "--quiet", "--out", out]
        r = launch(args, nproc=2) if n == 2 else subprocess.run(
            [sys.executable, "-m", "unetdist", *map(str, args)], capture_output=True,
            text=True, env=subprocess_env(), check=False, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "clDice " in r.stdout and "beta0 err " in r.stdout  # the summary line
        docs[n] = json.loads((out / "metrics.json").read_text())
    one, two = docs[1]["topology"], docs[2]["topology"]
    assert two == one and two["images"] == 3
    direct = _direct(shards, tmp_path / "ev2" / "predictions")
    for k in ("cldice", "tprec", "tsens", "beta0_error", "beta1_error", "fragments_per_image"):
        assert two[k] == pytest.approx(direct["total"][k], abs=1e-12), k
    rows = list(csv.DictReader((tmp_path / "ev2" / "per_image.csv").open()))
    assert [r["key"] for r in rows] == sorted(direct["per_image"])
    for r in rows:
        c = direct["per_image"][r["key"]]
        assert int(r["beta0_pred"]) == c["beta0_pred"]
        assert int(r["beta1_error"]) == c["beta1_abs_error"]
