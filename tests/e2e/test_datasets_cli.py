"""Each public dataset's layout end to end on its format twin, the way the README says:
`unetdist shard` -> `shard --verify` -> `train` (a few steps, tiny model) -> `evaluate`;
then cross-dataset evaluation (DRIVE-trained, CHASE test, eval.scale=auto) and k-fold training.

The commands run through `unetdist.cli.main` in this process (tests.util.cli: the same argument
parsing and code as the console script) because a dozen fresh interpreters importing torch would
cost more than the work itself; tests/unit/test_cli_errors.py checks that what it captures is
what the console script prints.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from tests import twins
from tests.util import cli

pytestmark = pytest.mark.slow

# layout -> (twin maker and size, documented counts: train (before --split-val), test)
LAYOUTS = {
    "drive": (lambda p: twins.make_drive(p, size=(72, 68)), 20, 20),
    "chase": (lambda p: twins.make_chase(p, size=(128, 132)), 20, 8),
    "stare": (lambda p: twins.make_stare(p, size=(84, 96)), 10, 10),
    "hrf": (lambda p: twins.make_hrf(p, size=(80, 120)), 15, 30),
}
TRAIN = ["model.width=8", "model.depth=3", "data.crop=64", "data.batch_size=2",
         "data.num_workers=0", "data.steps_per_epoch=2", "train.max_steps=2",
         "train.eval_every=0", "train.progress=false", "eval.tile=64", "eval.num_overlays=1",
         "track.wandb.mode=disabled"]


def _main(*args) -> tuple[int, str, str]:
    r = cli(*args)
    return r.returncode, r.stdout, r.stderr


def _ok(*args) -> str:
    rc, out, err = _main(*args)
    assert rc == 0, (out + err)[-3000:]
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    """Every layout sharded, verified and trained once (shared by the tests below)."""
    root = tmp_path_factory.mktemp("datasets")
    out = {}
    for layout, (make, n_train, n_test) in LAYOUTS.items():
        raw = make(root / f"raw-{layout}")
        shards = root / f"shards-{layout}"
        shard_out = _ok("shard", raw, shards, "--layout", layout, "--quiet")
        verify_out = _ok("shard", "--verify", shards, "--quiet")
        run = root / f"run-{layout}"
        _ok("train", *TRAIN, f"data.shared_dir={shards}", f"train.run_dir={run}")
        out[layout] = {"raw": raw, "shards": shards, "run": run, "shard_out": shard_out,
                       "verify_out": verify_out, "counts": (n_train, n_test)}
    return out


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_shards_trains_and_evaluates(runs, layout):
    r = runs[layout]
    m = json.loads((r["shards"] / "manifest.json").read_text())
    n_train, n_test = r["counts"]
    n_val = max(1, round(0.1 * n_train))  # the default --split-val 0.1
    assert {s: e["samples"] for s, e in m["splits"].items()} == {
        "train": n_train - n_val, "val": n_val, "test": n_test}
    assert f"wrote {n_train + n_test} samples" in r["shard_out"]
    assert r["verify_out"].startswith("ok: ")
    assert m["fov_source"] == ("estimated" if layout in ("chase", "stare") else "file")
    if m["fov_source"] == "estimated":  # the summary line says where every FOV came from
        assert f"FOV masks: {n_train + n_test} estimated from the images\n" in r["shard_out"]
    assert (r["run"] / "best" / "model.safetensors").is_file()
    ev = r["run"] / "eval-test"
    _ok("evaluate", "--checkpoint", r["run"] / "best", "--data", r["shards"], "--split", "test",
        "--out", ev, "--quiet")
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["num_images"] == n_test and 0 <= metrics["fov"]["auc_roc"] <= 1
    preds = sorted((ev / "predictions").glob("*_prob.png"))
    assert len(preds) == n_test
    if layout in ("drive", "chase", "stare"):  # a second observer on the test images
        assert metrics["second_observer"]["num_images"] == n_test


def test_drive_model_evaluates_on_chase_at_matched_scale(runs, tmp_path):
    """One command: a DRIVE-trained model on CHASE test images with eval.scale=auto."""
    from unetdist.data.codec import decode_sample
    from unetdist.data.reader import iter_raw, split_shards

    drive, chase = runs["drive"], runs["chase"]
    ev = tmp_path / "drive-on-chase"
    _ok("evaluate", "--checkpoint", drive["run"] / "best", "--data", chase["shards"],
        "--split", "test", "--out", ev, "--quiet", "eval.scale=auto")
    ref = json.loads((drive["shards"] / "manifest.json").read_text())["fov_diameter"]["train"]
    metrics = json.loads((ev / "metrics.json").read_text())
    assert metrics["settings"]["scale"] == "auto"
    assert metrics["settings"]["ref_fov_diameter"] == pytest.approx(ref)
    want = {}
    for shard in split_shards(str(chase["shards"]), "test"):
        for raw in iter_raw(shard):
            s = decode_sample(raw)
            d = 2 * np.sqrt(s["fov"].sum() / np.pi)  # independent of fov_diameter()
            want[s["key"]] = (ref / d, s["fov"].shape)
    with open(ev / "per_image.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["key"] for r in rows) == sorted(want) and len(rows) == 8
    for row in rows:
        scale, shape = want[row["key"]]
        assert float(row["scale"]) == pytest.approx(scale, abs=1e-3)
        assert 0.4 < float(row["scale"]) < 0.8  # CHASE twin discs are ~2x DRIVE twin discs
        assert (int(row["height"]), int(row["width"])) == shape  # scored at native size


def test_kfold_training_validates_on_the_held_out_fold(runs, tmp_path):
    raw = runs["drive"]["raw"]
    shards = tmp_path / "folds"
    out = _ok("shard", raw, shards, "--folds", "4", "--fold-seed", "1", "--quiet")
    assert "4 folds of the training samples (5/5/5/5)" in out
    m = json.loads((shards / "manifest.json").read_text())
    run = tmp_path / "run-fold1"
    _ok("train", *[a for a in TRAIN if not a.startswith("train.eval_every")],
        "train.eval_every=2", "data.fold=1", f"data.shared_dir={shards}",
        f"train.run_dir={run}")
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in rows if r.get("split") == "val"]
    assert val and all(r.get("num_images") == len(m["folds"]["ids"][1]) for r in val)
    _ok("evaluate", "--checkpoint", run / "best", "--data", shards, "--split", "val",
        "--out", tmp_path / "ev", "--quiet")  # the stored data.fold picks fold 1
    with open(tmp_path / "ev" / "per_image.csv") as f:
        assert sorted(r["key"] for r in csv.DictReader(f)) == m["folds"]["ids"][1]
    rc, _, err = _main("train", *TRAIN, "data.fold=4", f"data.shared_dir={shards}",
                       f"train.run_dir={tmp_path / 'bad'}")
    assert rc == 2 and err.strip().splitlines()[-1] == "error: data.fold must be in [0, 4), got 4"
