"""Evaluation under `accelerate launch` with 2 processes gives exactly the 1-process results."""

from __future__ import annotations

import json

import pytest

from tests.eval_helpers import make_best_dir, tiny_config
from tests.util import launch

pytestmark = [pytest.mark.dist, pytest.mark.slow]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    from unetdist.data.ingest.writer import shard_dataset
    from unetdist.data.ingest.synth import write_synthetic

    root = tmp_path_factory.mktemp("evaldist")
    # test: 3 images (uneven over 2 ranks); a second set with 1 image (one rank gets none)
    raw3 = write_synthetic(root / "raw3", n_train=1, n_test=3, size=(64, 72), seed=1,
                           progress=False)
    raw1 = write_synthetic(root / "raw1", n_train=1, n_test=1, size=(64, 72), seed=2,
                           progress=False)
    shard_dataset(raw3, root / "shards3", layout="drive", split_val=0.0)
    shard_dataset(raw1, root / "shards1", layout="drive", split_val=0.0)
    best = make_best_dir(root / "run" / "best", tiny_config("eval.num_overlays=3"), seed=4)
    return {"root": root, "best": best}


def _strip(doc: dict) -> dict:
    """The results without what legitimately differs: who ran them and how long it took."""
    return {k: v for k, v in doc.items() if k not in ("info", "seconds_per_image")}


def _rows(path) -> list[list[str]]:
    """per_image.csv without its timing column."""
    import csv

    rows = list(csv.reader(path.read_text().splitlines()))
    col = rows[0].index("seconds")
    return [r[:col] + r[col + 1:] for r in rows]


def _one_process(best, shards, out) -> None:
    """The reference: the same evaluation in this (single, non-distributed) process."""
    from unetdist.data.pipeline import eval_samples
    from unetdist.eval.evaluate import evaluate_split
    from unetdist.eval.inference import load_for_inference

    model, cfg = load_for_inference(best)
    samples = eval_samples(cfg.data, str(shards), "test", rank=0, world_size=1)
    evaluate_split(model, samples, cfg.eval, out_dir=out, info={"world_size": 1},
                   progress=False)


@pytest.mark.parametrize("n_images", [3, 1])
def test_two_processes_give_exactly_the_one_process_results(setup, n_images):
    root, best = setup["root"], setup["best"]
    shards = root / f"shards{n_images}"
    one, two = root / f"one{n_images}", root / f"two{n_images}"
    common = ["--checkpoint", best, "--data", shards, "--split", "test", "--quiet"]
    _one_process(best, shards, one)
    r = launch(["evaluate", *common, "--out", two], nproc=2)
    assert r.returncode == 0, r.stdout + r.stderr
    m1 = json.loads((one / "metrics.json").read_text())
    m2 = json.loads((two / "metrics.json").read_text())
    assert m2["info"]["world_size"] == 2 and m1["info"]["world_size"] == 1
    assert m2["num_images"] == n_images
    assert m2["fov"]["counts"] == m1["fov"]["counts"]
    assert m2["image"]["counts"] == m1["image"]["counts"]
    assert _strip(m2) == _strip(m1)  # AUCs too: the same integer histograms
    assert _rows(two / "per_image.csv") == _rows(one / "per_image.csv")
    assert m2["seconds_per_image"] > 0
    files = sorted(p.name for p in (one / "predictions").iterdir())
    assert len(files) == 2 * n_images
    assert files == sorted(p.name for p in (two / "predictions").iterdir())
    for name in files:  # each rank wrote its own images' PNGs
        assert (two / "predictions" / name).read_bytes() == \
            (one / "predictions" / name).read_bytes()
    overlays = lambda d: sorted(p.name for p in (d / "plots").glob("overlay_*"))
    assert overlays(two) == overlays(one) and len(overlays(one)) == n_images
    assert r.stdout.count("wrote ") == 1  # rank 0 reports
    # rank 0 announces its share's cost; with 1 image rank 0 holds none and says nothing
    assert r.stdout.count("estimate: ") == (1 if n_images == 3 else 0)
