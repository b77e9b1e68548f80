"""Multi-class evaluation under `accelerate launch` with 2 processes gives exactly the
1-process results: each image counted once, the ignore index excluded, one all-reduce."""

from __future__ import annotations

import csv
import json

import pytest

from tests.av_shards import av_shards
from tests.eval_helpers import make_best_dir, tiny_config
from tests.util import launch

pytestmark = [pytest.mark.dist, pytest.mark.slow]

AV = ("model.num_classes=4", "loss.name=ce", "loss.ignore_index=255", "data.channels=rgb",
      "eval.num_overlays=3")


def _strip(doc: dict) -> dict:
    return {k: v for k, v in doc.items() if k not in ("info", "seconds_per_image")}


def _rows(path) -> list[list[str]]:
    rows = list(csv.reader(path.read_text().splitlines()))
    col = rows[0].index("seconds")
    return [r[:col] + r[col + 1:] for r in rows]


def _scored_pixels(shards) -> int:
    from unetdist.data.pipeline import eval_samples

    cfg = tiny_config(*AV)
    samples = list(eval_samples(cfg.data, str(shards), "test", rank=0, world_size=1))
    ignored = sum(int(((s["fov"] > 0.5) & (s["label"] == 255)).sum()) for s in samples)
    assert ignored > 0  # the exclusion is really exercised
    return sum(int(((s["fov"] > 0.5) & (s["label"] != 255)).sum()) for s in samples)


@pytest.mark.parametrize("n_test", [3, 1])
def test_two_processes_give_the_one_process_multiclass_results(tmp_path, n_test):
    from unetdist.eval.evaluate import evaluate_checkpoints

    shards = av_shards(tmp_path, n_train=1, n_val=0, n_test=n_test, size=(64, 72), seed=5)
    best = make_best_dir(tmp_path / "run" / "best", tiny_config(*AV), seed=4)
    one, two = tmp_path / "one", tmp_path / "two"
    evaluate_checkpoints([best], shards, "test", out=one, progress=False)
    r = launch(["evaluate", "--checkpoint", best, "--data", shards, "--split", "test",
                "--quiet", "--out", two], nproc=2)
    assert r.returncode == 0, r.stdout + r.stderr
    m1 = json.loads((one / "metrics.json").read_text())
    m2 = json.loads((two / "metrics.json").read_text())
    assert m2["info"]["world_size"] == 2 and m1["info"]["world_size"] == 1
    assert m2["num_images"] == n_test and m2["mode"] == "multiclass"
    assert m2["classes"]["confusion"] == m1["classes"]["confusion"]
    # the confusion holds every FOV pixel that is not ignored, each once
    assert m2["classes"]["pixels"] == _scored_pixels(shards)
    assert _strip(m2) == _strip(m1)  # per-class AUCs too: the same integer histograms
    assert _rows(two / "per_image.csv") == _rows(one / "per_image.csv")
    files = sorted(p.name for p in (one / "predictions").iterdir())
    assert len(files) == 5 * n_test  # colours + 4 probability maps per image
    assert files == sorted(p.name for p in (two / "predictions").iterdir())
    for name in files:
        assert (two / "predictions" / name).read_bytes() == \
            (one / "predictions" / name).read_bytes()
    assert "A/V acc" in r.stdout and r.stdout.count("wrote ") == 1
