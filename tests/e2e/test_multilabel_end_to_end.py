"""A multi-label dataset end to end (issue 25), the way docs/datasets.md says: overlapping
labels in one mask folder per label -> `shard --multilabel` -> `--verify` -> `train` with the
binary defaults, which take their outputs and loss from the labels (2 processes under
`accelerate launch`, eval.threshold=auto choosing one threshold per label) -> `evaluate` on 2
processes -> `predict` -> `report` -> `export` -> the Python API."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from tests.twins import MULTILABEL_NAMES, make_multilabel_folders
from tests.util import cli, launch, subprocess_env

pytestmark = [pytest.mark.slow, pytest.mark.dist]

SPECS = ["background=0,0,0", "vessel=255,255,255", "artery=255,0,0", "vein=0,0,255"]
SMALL = ["model.width=8", "model.depth=2", "data.crop=64", "data.batch_size=2",
         "data.num_workers=0", "data.steps_per_epoch=4", "train.max_steps=8", "train.eval_every=4",
         "eval.tile=0", "eval.tta=false", "train.precision=no", "data.local_dir=null",
         "data.stage=false", "checkpoint.every_steps=4", "train.progress=false",
         "track.wandb.mode=disabled", "model.channels_last=false", "data.channels=rgb",
         "eval.threshold=auto"]


def _ok(r) -> None:
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("ml")
    make_multilabel_folders(root / "raw", n_train=6, n_test=2, size=(96, 88))
    _ok(cli("shard", root / "raw", root / "shards", "--layout", "folders", "--test-images",
            "test_images", "--test-labels", "test_labels", "--classes", *SPECS, "--multilabel",
            "--split-val", "0.34", "--quiet"))
    _ok(cli("shard", "--verify", root / "shards"))
    r = launch(["train", *SMALL, f"data.shared_dir={root / 'shards'}",
                f"train.run_dir={root / 'run'}"], env=subprocess_env(), timeout=600)
    _ok(r)
    assert "model.num_classes=3, loss.name=multilabel_bce_dice: from the shards'" in (
        r.stdout + r.stderr)
    return root


def test_training_keeps_per_label_validation_and_thresholds(run):
    records = [json.loads(x) for x in (run / "run" / "metrics.jsonl").read_text().splitlines()]
    val = [r for r in records if r.get("split") == "val"]
    assert [r["step"] for r in val] == [4, 8]
    assert {f"dice_{n}" for n in MULTILABEL_NAMES} <= set(val[-1])
    best = json.loads((run / "run" / "best" / "metrics.json").read_text())
    assert best["dice"] == max(r["dice"] for r in val)
    chosen = {n: v["threshold"] for n, v in best["f1_thresholds"].items()}
    assert best["label_thresholds"] == chosen and set(chosen) == set(MULTILABEL_NAMES)
    with safe_open(str(run / "run" / "best" / "model.safetensors"), "pt") as f:
        meta = f.metadata()
    assert json.loads(meta["classes"])["mode"] == "multilabel"
    assert json.loads(meta["label_thresholds"]) == chosen


def test_evaluate_on_two_ranks_scores_each_label_at_its_threshold(run):
    ev = run / "ev"
    _ok(launch(["evaluate", "--checkpoint", run / "run", "--data", run / "shards", "--split",
                "test", "--out", ev, "--quiet"], env=subprocess_env(), timeout=600))
    metrics = json.loads((ev / "metrics.json").read_text())
    best = json.loads((run / "run" / "best" / "metrics.json").read_text())
    assert metrics["num_images"] == 2 and metrics["label_thresholds"] == best["label_thresholds"]
    # each label's Dice recomputed from the masks written and the raw masks (independent files)
    for name in MULTILABEL_NAMES:
        tp = fp = fn = 0
        for stem in ("41", "42"):
            pred = np.array(Image.open(ev / "predictions" / f"{stem}.{name}.png")) > 0
            truth = np.array(Image.open(run / "raw" / "test_labels" / name / f"{stem}.png")) > 0
            tp += int((pred & truth).sum())
            fp += int((pred & ~truth).sum())
            fn += int((~pred & truth).sum())
        want = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
        assert metrics["labels"]["per_label"][name]["dice"] == pytest.approx(want, abs=1e-9)


def test_predict_report_export_and_the_python_api(run):
    _ok(cli("predict", "--checkpoint", run / "run", "--images", run / "raw" / "test_images",
            "--out", run / "pred", "--quiet"))
    for name in MULTILABEL_NAMES:
        mask = np.array(Image.open(run / "pred" / f"41.{name}.png"))
        assert set(np.unique(mask)) <= {0, 255}
        assert (run / "pred" / f"41.{name}.prob.png").is_file()
    _ok(cli("evaluate", "--checkpoint", run / "run", "--data", run / "shards", "--split",
            "test", "--quiet"))
    _ok(cli("report", run / "run"))
    html = (run / "run" / "report.html").read_text()
    assert "Per-label metrics" in html and "artery" in html
    out = run / "ml.safetensors"
    _ok(cli("export", "--checkpoint", run / "run", "--format", "safetensors", "--out", out))
    code = ("import sys, numpy as np; from unetdist import load_model; m = load_model(sys.argv[1]);"
            "s = m.segment(sys.argv[2]); p = m.predict(sys.argv[2]);"
            "t = np.array(m.thresholds).reshape(-1, 1, 1);"
            "assert s.shape == (3, 96, 88) and (s == (p >= t)).all(), s.shape;"
            "print(m.table.describe(), m.thresholds)")
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", code, str(out),
                        str(run / "raw" / "test_images" / "41.png")], check=False,
                       capture_output=True, text=True, env=subprocess_env(), timeout=300)
    _ok(r)
    assert "multilabel" in r.stdout
