"""`evaluate --checkpoint A B` under `accelerate launch` with 2 processes: every test image is
scored exactly once, with the mean of the two models' probabilities (an independent per-image
numpy computation is the reference)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from tests.eval_helpers import make_best_dir, tiny_config
from tests.util import launch

pytestmark = [pytest.mark.dist, pytest.mark.slow]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    from unetdist.data.ingest.synth import write_synthetic
    from unetdist.data.ingest.writer import shard_dataset

    root = tmp_path_factory.mktemp("ensdist")
    for n in (3, 1):  # 3 images: uneven over 2 ranks; 1 image: one rank scores none
        raw = write_synthetic(root / f"raw{n}", n_train=1, n_test=n, size=(64, 72), seed=n,
                              progress=False)
        shard_dataset(raw, root / f"shards{n}", layout="drive", split_val=0.0)
    cfg = tiny_config("eval.num_overlays=1")
    a = make_best_dir(root / "fold0" / "best", cfg, seed=4)
    b = make_best_dir(root / "fold1" / "best", cfg, seed=9)
    return {"root": root, "models": [a, b]}


def _reference_counts(models, shards) -> tuple[dict, dict]:
    """Per image: FOV confusion counts of the mean of each model's own sliding-window map."""
    from unetdist.data.pipeline import eval_samples
    from unetdist.eval.inference import load_for_inference, sliding_window_predict

    loaded = [load_for_inference(m) for m in models]
    cfg = loaded[0][1]
    per_image, total = {}, dict.fromkeys(("tp", "fp", "fn", "tn"), 0)
    for s in eval_samples(cfg.data, str(shards), "test", rank=0, world_size=1):
        probs = [sliding_window_predict(m, s["image"], c.eval)[0, 0].numpy() for m, c in loaded]
        fov = s["fov"][0, 0].numpy() > 0.5
        pred = (np.mean(probs, axis=0) * fov) >= cfg.eval.threshold
        lab = s["label"][0, 0].numpy() > 0.5
        c = {"tp": int((pred & lab & fov).sum()), "fp": int((pred & ~lab & fov).sum()),
             "fn": int((~pred & lab & fov).sum()), "tn": int((~pred & ~lab & fov).sum())}
        per_image[s["key"]] = c
        for k in total:
            total[k] += c[k]
    return per_image, total


@pytest.mark.parametrize("n_images", [3, 1])
def test_two_process_ensemble_scores_each_image_once_with_averaged_probabilities(setup,
                                                                               n_images):
    root, models = setup["root"], setup["models"]
    shards, out = root / f"shards{n_images}", root / f"ens{n_images}"
    r = launch(["evaluate", "--checkpoint", *models, "--data", shards, "--split", "test",
                "--no-progress", "--out", out], nproc=2)
    assert r.returncode == 0, r.stdout + r.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert m["info"]["world_size"] == 2 and m["info"]["ensemble"] == 2
    assert m["info"]["checkpoint"] == [str(p.resolve()) for p in models]
    per_image, total = _reference_counts(models, shards)
    assert m["num_images"] == n_images == len(per_image)
    assert m["fov"]["counts"] == total
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert sorted(r["key"] for r in rows) == sorted(per_image)  # each image exactly once
    for row in rows:
        assert {k: int(row[f"fov_{k}"]) for k in total} == per_image[row["key"]]
    assert len(list((out / "predictions").glob("*_prob.png"))) == n_images
    assert r.stdout.count("wrote ") == 1
